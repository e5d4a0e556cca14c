"""Shared pytest fixtures."""

import os
import uuid

import pytest


def pytest_sessionstart(session):
    """Tests set what they need: M3INGEST_* variables of the caller's shell (or CI) must not leak in."""
    for name in [n for n in os.environ if n.startswith("M3INGEST_")]:
        del os.environ[name]


# --- connectors: one store per backend and test module, a fresh collection per test ---------------


@pytest.fixture(scope="module", params=["milvus", "qdrant"])
def store(request, tmp_path_factory):
    """A real embedded store (a Milvus Lite file, or Qdrant local in memory), shared by one test module."""
    from m3ingest.connectors import RetryPolicy, open_store

    folder = tmp_path_factory.mktemp(request.param)
    uri = str(folder / "m3.db") if request.param == "milvus" else ":memory:"
    s = open_store(request.param, uri, retry_policy=RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.05))
    yield s
    s.close()


@pytest.fixture
def collection(store):
    """A collection name unused in ``store``, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    store.drop_collection(name)
