"""Execution modes: a CUDA graph capture or compile failure falls back to eager, logged once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from m3ingest.encoder import M3Encoder
from m3ingest.encoder.model import M3Model
from m3ingest.encoder.runners import resolve_execution

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-m3"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return json.loads((FIXTURES / "tiny-m3-texts.json").read_text())


@pytest.fixture(scope="module")
def eager(texts):
    return M3Encoder(TINY, device="cpu", dtype="float32", execution="eager").encode(texts, colbert=True, max_length=512)


def _assert_equal(a, b) -> None:
    np.testing.assert_array_equal(a.dense, b.dense)
    assert a.sparse == b.sparse
    for x, y in zip(a.colbert, b.colbert, strict=True):
        np.testing.assert_array_equal(x, y)


def test_auto_is_graphs_on_cuda_and_eager_on_cpu():
    assert resolve_execution("auto", torch.device("cuda", 0)) == "graphs"
    assert resolve_execution("auto", torch.device("cpu")) == "eager"
    with pytest.raises(ValueError, match="unknown execution"):
        resolve_execution("jit", torch.device("cpu"))


def test_a_failed_graph_capture_logs_once_and_encodes_eagerly(texts, eager, caplog):
    # A CPU cannot capture CUDA graphs: the capture fails for real, on the first batch.
    enc = M3Encoder(TINY, device="cpu", dtype="float32", execution="graphs")
    with caplog.at_level("WARNING", logger="m3ingest.encoder"):
        first = enc.encode(texts, colbert=True, max_length=512)
        second = enc.encode(texts, colbert=True, max_length=512)
    assert caplog.text.count("CUDA graph capture failed") == 1
    _assert_equal(first, eager)
    _assert_equal(second, eager)


def test_a_failed_compile_logs_once_and_encodes_eagerly(texts, eager, caplog, monkeypatch):
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            calls.append(kwargs)
            raise RuntimeError("inductor: no working C++ compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    enc = M3Encoder(TINY, device="cpu", dtype="float32", execution="compile")
    with caplog.at_level("WARNING", logger="m3ingest.encoder"):
        first = enc.encode(texts, colbert=True, max_length=512)
        second = enc.encode(texts, colbert=True, max_length=512)
    assert calls == [{"dynamic": True}]  # tried once, then never again
    assert caplog.text.count("torch.compile failed") == 1
    _assert_equal(first, eager)
    _assert_equal(second, eager)


def test_warmup_on_cpu_is_a_no_op_and_encoding_works(texts, eager):
    enc = M3Encoder(TINY, device="cpu", dtype="float32", warmup=True)
    _assert_equal(enc.encode(texts, colbert=True, max_length=512), eager)


@pytest.mark.parametrize("masked", [True, False])
def test_the_backbone_pass_has_no_host_synchronisation(masked):
    # What CUDA graphs need, checked on a CPU: tracing the pass gives one graph with no break,
    # so nothing in it reads a tensor's value on the host or makes a data-dependent shape.
    import torch._dynamo

    model = M3Model(TINY, None, None, [0, 1, 2, 3], torch.device("cpu"), torch.float32)
    ids = torch.randint(5, 200, (4, 64))
    lengths = torch.tensor([64, 60, 17, 64] if masked else [64] * 4)
    with torch.inference_mode():
        explained = torch._dynamo.explain(model.hidden)(ids, lengths, masked)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
