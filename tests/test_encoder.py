"""M3Encoder against the FlagEmbedding reference outputs, and its loading behaviour."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from m3ingest.encoder import CheckpointError, M3Encoder

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-m3"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return json.loads((FIXTURES / "tiny-m3-texts.json").read_text())


@pytest.fixture(scope="module")
def encoder() -> M3Encoder:
    return M3Encoder(TINY, device="cpu", dtype="float32")


def _reference(max_length: int) -> tuple[np.ndarray, list[dict[int, float]], list[np.ndarray]]:
    ref = np.load(FIXTURES / f"tiny-m3-reference-{max_length}.npz")
    n = ref["dense"].shape[0]
    sparse: list[dict[int, float]] = [{} for _ in range(n)]
    for row, token, weight in zip(ref["sparse_row"], ref["sparse_id"], ref["sparse_weight"], strict=True):
        sparse[int(row)][int(token)] = float(weight)
    offsets = ref["colbert_offsets"]
    colbert = [ref["colbert"][offsets[i] : offsets[i + 1]] for i in range(n)]
    return ref["dense"], sparse, colbert


def _assert_same(a, b, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(a.dense, b.dense, atol=atol, rtol=0)
    assert [sorted(x) for x in a.sparse] == [sorted(y) for y in b.sparse]
    for x, y in zip(a.sparse, b.sparse, strict=True):
        np.testing.assert_allclose([x[k] for k in sorted(x)], [y[k] for k in sorted(y)], atol=atol)
    assert [c.shape for c in a.colbert] == [c.shape for c in b.colbert]
    for x, y in zip(a.colbert, b.colbert, strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def encoders(encoder) -> dict[str, M3Encoder]:
    """The default (auto) encoder and one per batch-shape setting."""
    shapes = ("grid", "buckets", "exact")
    others = {s: M3Encoder(TINY, device="cpu", dtype="float32", shapes=s) for s in shapes}
    return {"auto": encoder, **others}


@pytest.mark.parametrize("shapes", ["auto", "grid", "buckets", "exact"])
@pytest.mark.parametrize("max_length", [8192, 16])
def test_outputs_equal_flagembedding_reference(encoders, texts, max_length, shapes):
    encoder = encoders[shapes]
    dense, sparse, colbert = _reference(max_length)
    out = encoder.encode(texts, dense=True, sparse=True, colbert=True, max_length=max_length)

    assert out.dense.dtype == np.float32 and out.dense.shape == dense.shape
    np.testing.assert_allclose(out.dense, dense, atol=1e-5, rtol=0)
    assert [sorted(s) for s in out.sparse] == [sorted(s) for s in sparse]
    for got, want in zip(out.sparse, sparse, strict=True):
        for token, weight in want.items():
            assert abs(got[token] - weight) <= 1e-5
    assert len(out.colbert) == len(colbert)
    for got, want in zip(out.colbert, colbert, strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # The empty and whitespace-only texts are <s></s>: no lexical weights, one ColBERT row (EOS).
    for i, text in enumerate(texts):
        if not text.strip():
            assert out.sparse[i] == {} and out.colbert[i].shape == (1, encoder.colbert_dim)


def test_long_text_is_truncated_to_max_length(encoder, texts):
    longest = max(texts, key=len)
    ids = encoder.tokenize([longest], max_length=8192)[0]
    assert len(ids) == 8192 and ids[0] == encoder.tokenizer.cls_token_id
    assert ids[-1] == encoder.tokenizer.eos_token_id


def test_only_asked_outputs_are_returned(encoder, texts):
    out = encoder.encode(texts[:3], dense=True, sparse=False, colbert=False)
    assert out.sparse is None and out.colbert is None and out.dense.shape == (3, encoder.dim)
    out = encoder.encode(texts[:3], dense=False, sparse=True, colbert=False)
    assert out.dense is None and len(out.sparse) == 3


def test_encode_ids_equals_encode(encoder, texts):
    ids = encoder.tokenize(texts, max_length=512)
    a = encoder.encode(texts, colbert=True, max_length=512)
    b = encoder.encode_ids(ids, colbert=True)
    _assert_same(a, b, atol=0)


def test_batch_budget_does_not_change_outputs(encoder, texts):
    big = encoder.encode(texts, colbert=True, max_length=64)
    small = encoder.encode(texts, colbert=True, max_length=64, batch_tokens=40)
    _assert_same(big, small)


def test_empty_input_gives_empty_outputs(encoder):
    out = encoder.encode([], colbert=True)
    assert out.dense.shape == (0, encoder.dim) and out.sparse == [] and out.colbert == []


def test_one_string_is_rejected(encoder):
    with pytest.raises(TypeError, match="wrap it in a list"):
        encoder.encode("a single string")


def test_devices_share_one_queue_with_identical_outputs(encoder, texts):
    two = M3Encoder(TINY, device=["cpu", "cpu"], dtype="float32")
    assert [str(d) for d in two.devices] == ["cpu", "cpu"]
    a = encoder.encode(texts, colbert=True, max_length=64, batch_tokens=40)
    b = two.encode(texts, colbert=True, max_length=64, batch_tokens=40)
    _assert_same(a, b, atol=0)


def test_concurrent_calls_from_threads(encoder, texts):
    expected = encoder.encode(texts, max_length=64)
    results: list = [None] * 4

    def call(i: int) -> None:
        results[i] = encoder.encode(texts, max_length=64)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in results:
        np.testing.assert_array_equal(out.dense, expected.dense)
        assert out.sparse == expected.sparse


def test_token_strings_are_readable(encoder):
    out = encoder.encode(["hello hello world"], dense=False)
    strings = encoder.token_strings(out.sparse[0])
    assert strings and all(isinstance(k, str) and k and not k.startswith("▁") for k in strings)
    assert max(strings.values()) == max(out.sparse[0].values())
    assert "<s>" not in strings and "</s>" not in strings


def test_missing_head_file_is_named_and_dense_still_works(tmp_path, texts):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY, ckpt)
    (ckpt / "colbert_linear.pt").unlink()
    enc = M3Encoder(ckpt, device="cpu", dtype="float32")
    dense, _, _ = _reference(8192)
    out = enc.encode(texts, dense=True, sparse=False)
    np.testing.assert_allclose(out.dense, dense, atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match=r"colbert_linear\.pt"):
        enc.encode(texts, colbert=True)


def test_head_file_with_code_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY, ckpt)
    torch.save({"weight": torch.zeros(1, 32), "run": print}, ckpt / "sparse_linear.pt")
    with pytest.raises(CheckpointError, match=r"sparse_linear\.pt"):
        M3Encoder(ckpt, device="cpu", dtype="float32")


def test_safetensors_backbone_loads_the_same(tmp_path, encoder, texts):
    from safetensors.torch import save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY, ckpt)
    state = torch.load(ckpt / "pytorch_model.bin", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, ckpt / "model.safetensors")
    (ckpt / "pytorch_model.bin").unlink()
    enc = M3Encoder(ckpt, device="cpu", dtype="float32")
    _assert_same(enc.encode(texts, colbert=True), encoder.encode(texts, colbert=True), atol=0)


def test_unreachable_hub_fails_fast_with_local_dir_advice(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(CheckpointError, match="--local-dir") as info:
        M3Encoder("m3ingest-tests/not-a-model", device="cpu")
    assert "M3INGEST_MODEL__NAME" in str(info.value)


def test_missing_local_directory_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"model directory .*no/such/dir.* does not exist"):
        M3Encoder(tmp_path / "no" / "such" / "dir", device="cpu")
