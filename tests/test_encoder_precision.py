"""Device and precision choice, and what bf16 keeps compared with fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook
from transformers import XLMRobertaModel

from m3ingest.encoder import M3Encoder
from m3ingest.encoder.precision import (
    cpu_has_native_bf16,
    overflow_fallback_dtype,
    resolve_devices,
    resolve_dtype,
)
from m3ingest.encoder.random_checkpoint import build_random_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-m3"


def test_auto_dtype_on_cpu_follows_native_bf16():
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_devices():
    assert resolve_devices("cpu") == [torch.device("cpu")]
    assert resolve_devices(["cpu", "cpu"]) == [torch.device("cpu")] * 2
    if not torch.cuda.is_available():
        assert resolve_devices(None) == [torch.device("cpu")]
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_devices("cuda:1")


def test_encoder_reports_the_dtype_used(caplog):
    with caplog.at_level("INFO", logger="m3ingest.encoder"):
        enc = M3Encoder(TINY, device="cpu", dtype="bfloat16")
    assert enc.dtype == torch.bfloat16
    assert "bfloat16" in caplog.text
    assert enc.encode(["a b"]).dense.dtype == np.float32


def _top(sparse: dict[int, float], k: int = 10) -> list[int]:
    return sorted(sparse, key=sparse.get, reverse=True)[:k]


def _assert_bf16_keeps_fp32_results(checkpoint: Path, texts: list[str], tie: float) -> None:
    fp32 = M3Encoder(checkpoint, device="cpu", dtype="float32").encode(texts, max_length=512)
    bf16 = M3Encoder(checkpoint, device="cpu", dtype="bfloat16").encode(texts, max_length=512)
    cosine = (fp32.dense * bf16.dense).sum(axis=1)
    assert cosine.min() >= 0.999
    for a, b in zip(fp32.sparse, bf16.sparse, strict=True):
        if len(a) <= 10:
            assert set(a) == set(b)
            continue
        # Random weights give near-ties at the 10th place, closer than bf16's ~1% error;
        # tokens clearly inside (or outside) the fp32 top 10 must be so in bf16 too.
        tenth = a[_top(a)[-1]]
        sure_in = {t for t, w in a.items() if w > tenth + tie}
        maybe = {t for t, w in a.items() if w >= tenth - tie}
        assert sure_in <= set(_top(b)) <= maybe


def test_bf16_keeps_dense_cosine_and_top_sparse_tokens_on_the_fixture():
    texts = json.loads((FIXTURES / "tiny-m3-texts.json").read_text())
    _assert_bf16_keeps_fp32_results(TINY, texts, tie=0.0)


def test_bf16_keeps_results_on_a_wider_random_checkpoint(tmp_path):
    texts = json.loads((FIXTURES / "tiny-m3-texts.json").read_text())
    ckpt = build_random_checkpoint(tmp_path / "m3-256", TINY, layers=2, hidden=256, heads=4)
    _assert_bf16_keeps_fp32_results(ckpt, texts, tie=2e-2)


def test_auto_dtype_on_cuda_is_float16_the_references_gpu_precision():
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert overflow_fallback_dtype(torch.device("cpu")) == torch.bfloat16


def test_a_float16_batch_with_non_finite_outputs_is_computed_again(caplog):
    texts = json.loads((FIXTURES / "tiny-m3-texts.json").read_text())
    fp32 = M3Encoder(TINY, device="cpu", dtype="float32").encode(texts, colbert=True, max_length=512)
    enc = M3Encoder(TINY, device="cpu", dtype="float16")
    overflowed: list[int] = []

    def overflow(module, args, output):
        # Every float16 backbone pass of the first call overflows, as activations past 65504 do.
        if isinstance(module, XLMRobertaModel) and module.dtype == torch.float16 and len(overflowed) < 100:
            overflowed.append(output.last_hidden_state.shape[0])
            output.last_hidden_state[0, 0, 0] = float("inf")
        return output

    handle = register_module_forward_hook(overflow)
    try:
        with caplog.at_level("WARNING", logger="m3ingest.encoder"):
            first = enc.encode(texts, colbert=True, max_length=512)
            passes = len(overflowed)
            overflowed.extend([0] * 100)  # the second call runs in float16 untouched
            second = enc.encode(texts, colbert=True, max_length=512)
    finally:
        handle.remove()

    assert passes >= 2  # several batches, each recomputed
    assert caplog.text.count("float16 overflow") == 1 and "bfloat16" in caplog.text
    for out in (first, second):
        assert np.isfinite(out.dense).all()
        assert all(np.isfinite(list(s.values())).all() for s in out.sparse)
        assert all(np.isfinite(c).all() for c in out.colbert)
        assert (out.dense * fp32.dense).sum(axis=1).min() >= 0.999
        for a, b in zip(out.sparse, fp32.sparse, strict=True):
            assert set(a) == set(b)
            assert max((abs(a[k] - b[k]) for k in a), default=0.0) <= 2e-2 * max(b.values(), default=1.0)
        for a, b in zip(out.colbert, fp32.colbert, strict=True):
            assert (a * b).sum(axis=1).min() >= 0.99
