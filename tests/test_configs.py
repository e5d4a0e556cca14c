"""Every example configuration in configs/ loads, so the examples cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from m3ingest.config import load_config, secret
from m3ingest.context import CollectionContext

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.toml"))
ENV = {"MILVUS_TOKEN": "milvus-token", "QDRANT_API_KEY": "qdrant-key"}


def test_the_examples_are_there():
    names = {p.name for p in CONFIGS}
    assert {"milvus-lite.toml", "milvus-server.toml", "qdrant-server.toml", "qdrant-local.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_loads(path):
    cfg = load_config(path, env=ENV)
    assert cfg.store.backend in ("milvus", "qdrant")
    assert cfg.model.name
    records = CollectionContext.from_config(cfg).records_path
    assert records is None or records.suffix in (".sqlite", ".db")
    for value in (cfg.store.token, cfg.store.api_key):
        assert secret(value) in (None, *ENV.values())


def test_embedded_default_matches_no_configuration():
    cfg = load_config(Path(__file__).parent.parent / "configs" / "milvus-lite.toml", env={})
    bare = load_config(env={})
    assert cfg.model_dump() == bare.model_dump()
