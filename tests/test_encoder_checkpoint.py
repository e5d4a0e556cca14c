"""Checkpoints: revisions, the cache without network, fingerprints, the model width, from_config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from m3ingest.encoder import CheckpointError, M3Encoder
from m3ingest.encoder.checkpoint import (
    _samples,
    cached_checkpoint,
    fingerprint,
    model_dim,
    resolve_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-m3"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root: Path, repo: str = "m3ingest-tests/tiny-m3") -> Path:
    """A Hugging Face cache holding ``repo`` at COMMIT on main, laid out as the hub client does."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    shutil.copytree(TINY, snapshot)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return snapshot


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_checkpoint_module_resolves_a_cached_hub_id_without_torch_or_network(tmp_path):
    snapshot = _hub_cache(tmp_path / "hub")
    result = _run(
        """
        import sys, time
        from m3ingest.encoder.checkpoint import cached_checkpoint, fingerprint, model_dim
        start = time.monotonic()
        path = cached_checkpoint("m3ingest-tests/tiny-m3")
        print(path)
        print(fingerprint(path), model_dim(path))
        print(cached_checkpoint("m3ingest-tests/not-cached"))
        print("torch" in sys.modules, time.monotonic() - start < 5)
        """,
        # Nothing listens on the discard port: any network use would fail or hang.
        {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert Path(lines[0]).resolve() == snapshot.resolve()
    assert lines[1] == f"{COMMIT} 32"
    assert lines[2] == "None"
    assert lines[3] == "False True"


def test_local_directory_fingerprint_follows_the_files_the_encoder_loads(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY, ckpt)
    first = fingerprint(ckpt)
    assert len(first) == 64 and fingerprint(ckpt) == first

    (ckpt / "README.md").write_text("notes")
    (ckpt / "onnx").mkdir()
    assert fingerprint(ckpt) == first  # not loaded: no change

    config = json.loads((ckpt / "config.json").read_text())
    config["layer_norm_eps"] = 1e-5
    (ckpt / "config.json").write_text(json.dumps(config))
    second = fingerprint(ckpt)
    assert second != first

    head = bytearray((ckpt / "sparse_linear.pt").read_bytes())
    head[-1] ^= 1
    (ckpt / "sparse_linear.pt").write_bytes(bytes(head))
    assert fingerprint(ckpt) != second


def test_large_weight_files_are_fingerprinted_by_size_and_samples(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY, ckpt)
    weights = ckpt / "model.safetensors"
    with weights.open("wb") as f:
        f.truncate(200 << 20)  # sparse: no 200 MB written
    before = fingerprint(ckpt)
    middle = _samples(200 << 20)[8][0]
    for offset in (0, middle, (200 << 20) - 1):  # start, a sample between, end
        with weights.open("r+b") as f:
            f.seek(offset)
            f.write(b"\1")
        after = fingerprint(ckpt)
        assert after != before
        before = after
    with weights.open("r+b") as f:
        f.truncate((200 << 20) + 1)
    assert fingerprint(ckpt) != before


def test_model_dim_reads_the_config_and_names_the_setting_when_it_cannot(tmp_path):
    assert model_dim(TINY) == 32
    with pytest.raises(CheckpointError, match="M3INGEST_MODEL__NAME") as info:
        model_dim(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


def test_a_revision_is_refused_for_a_local_directory():
    with pytest.raises(CheckpointError, match="M3INGEST_MODEL__REVISION"):
        resolve_checkpoint(TINY, revision="v1")
    with pytest.raises(CheckpointError, match="no revision 'main'"):
        M3Encoder(TINY, device="cpu", revision="main")
    assert cached_checkpoint(TINY) == TINY


def test_unreachable_hub_with_a_revision_names_it_in_the_advice(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(CheckpointError, match="--revision v2 --local-dir") as info:
        resolve_checkpoint("m3ingest-tests/not-a-model", revision="v2")
    assert "M3INGEST_MODEL__NAME" in str(info.value)


def test_from_config_reads_the_model_section():
    config = SimpleNamespace(name=str(TINY), revision=None, device="cpu", dtype="float32", batch_tokens=4096)
    enc = M3Encoder.from_config(config)
    assert (enc.path, enc.dtype, enc.batch_tokens, enc.revision) == (TINY, torch.float32, 4096, None)
    assert enc.encode(["hello world"]).dense.shape == (1, model_dim(TINY))
    with pytest.raises(CheckpointError, match="no revision"):
        M3Encoder.from_config(SimpleNamespace(**{**vars(config), "revision": "main"}))
