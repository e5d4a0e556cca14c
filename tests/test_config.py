"""Configuration precedence (defaults < file < environment < overrides) and ${VAR} expansion."""

from __future__ import annotations

import pytest

from m3ingest.config import Config, ConfigError, load_config, resolve_config, secret


def test_defaults_need_no_file():
    cfg = load_config(env={})
    assert (cfg.store.backend, cfg.store.uri, cfg.model.name) == ("milvus", "./m3ingest.db", "BAAI/bge-m3")
    assert (cfg.chunking.chunk_size, cfg.chunking.overlap) == (512, 64)


def test_file_then_environment_then_overrides(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[store]\nuri = "file.db"\ncollection = "file"\n[chunking]\nchunk_size = 300\n')
    env = {"M3INGEST_STORE__COLLECTION": "env", "M3INGEST_CHUNKING__OVERLAP": "10"}
    cfg = load_config(path, overrides={"chunking": {"chunk_size": 200, "overlap": None}}, env=env)
    assert cfg.store.uri == "file.db"
    assert cfg.store.collection == "env"
    assert (cfg.chunking.chunk_size, cfg.chunking.overlap) == (200, 10)


def test_flat_overrides_of_the_library_functions(tmp_path, monkeypatch):
    monkeypatch.setenv("M3INGEST_STORE__COLLECTION", "env")
    path = tmp_path / "job.toml"
    path.write_text('[store]\nbackend = "qdrant"\nuri = "q"\n')
    cfg = resolve_config(path, collection="kw", chunk_size=128, overlap=None, include=["*.md"])
    assert (cfg.store.backend, cfg.store.collection, cfg.chunking.chunk_size) == ("qdrant", "kw", 128)
    assert cfg.sources.include == ["*.md"]
    base = Config()
    assert resolve_config(base, model="x").model.name == "x" and base.model.name == "BAAI/bge-m3"
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        resolve_config(None, colour="red")


def test_secrets_come_from_the_environment(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[store]\nuri = "http://milvus:19530"\ntoken = "${TOKEN}"\n')
    cfg = load_config(path, env={"TOKEN": "s3cret"})
    assert secret(cfg.store.token) == "s3cret" and "s3cret" not in repr(cfg)
    with pytest.raises(ConfigError, match=r"job.toml.store.token refers to \$\{TOKEN\}"):
        load_config(path, env={})


@pytest.mark.parametrize(
    "text, message",
    [
        ("[store\n", "not valid TOML"),
        ('[store]\nbackend = "oracle"\n', "store.backend"),
        ("[chunking]\nchunk_size = 64\noverlap = 64\n", r"overlap \(64\) must be smaller"),
        ('[nonsense]\nx = 1\n', "nonsense"),
    ],
)
def test_invalid_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})
