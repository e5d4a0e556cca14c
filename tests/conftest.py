"""Shared pytest fixtures."""

import os
import uuid

import pytest


def pytest_sessionstart(session):
    """Tests set what they need: M3INGEST_* variables of the caller's shell (or CI) must not leak in."""
    for name in [n for n in os.environ if n.startswith("M3INGEST_")]:
        del os.environ[name]


# --- connectors: one store per backend and test module, a fresh collection per test ---------------


def open_test_store(kind, request, tmp_path_factory):
    """A real store: ``milvus`` a Milvus Lite file, ``qdrant`` Qdrant local in memory,
    ``milvus-server`` the session's ``milvus_server`` reached by URI (the server code path)."""
    from m3ingest.connectors import RetryPolicy, open_store

    policy = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.05)
    if kind == "milvus-server":
        return open_store("milvus", request.getfixturevalue("milvus_server"), retry_policy=policy)
    uri = str(tmp_path_factory.mktemp(kind) / "m3.db") if kind == "milvus" else ":memory:"
    return open_store(kind, uri, retry_policy=policy)


@pytest.fixture(params=["milvus", "qdrant"])
def backend(request) -> str:
    """Each embedded engine in turn, by name (for tests that build their own configuration)."""
    return request.param


@pytest.fixture(scope="module", params=["milvus", "qdrant"])
def store(request, tmp_path_factory):
    """A real embedded store (a Milvus Lite file, or Qdrant local in memory), shared by one test module."""
    s = open_test_store(request.param, request, tmp_path_factory)
    yield s
    s.close()


@pytest.fixture
def collection(store):
    """A collection name unused in ``store``, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    store.drop_collection(name)


# --- a Milvus server that several processes share ---------------------------------------------


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """The URI of a Milvus Lite gRPC server in its own process (``python -m milvus_lite server``):
    stores reach it through the server code path (``http://host:port``), from any process."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path_factory.mktemp("milvus-server")
    with open(data / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data / "data"),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as e:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    raise RuntimeError(f"milvus_lite server did not start; see {data / 'server.log'}") from e
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
        server.terminate()
        server.wait(timeout=30)
