"""Concurrent queries share encoder batches and each gets its own vectors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from m3ingest.encoder import M3Encoder
from m3ingest.retrievers.batching import QueryBatcher

from retrievers_corpus import TINY_M3


class _GatedEncoder(M3Encoder):
    """The real encoder; its first call waits for ``gate``, and every batch is recorded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.batches: list[list[str]] = []

    def encode(self, texts, *args, **kwargs):
        if not self.batches:
            self.batches.append(list(texts))
            self.gate.wait(timeout=60)
        else:
            self.batches.append(list(texts))
        return super().encode(texts, *args, **kwargs)


@pytest.fixture
def encoder():
    return _GatedEncoder(TINY_M3, device="cpu", dtype="float32")


def test_queries_waiting_on_a_busy_encoder_share_the_next_batch(encoder):
    batcher = QueryBatcher(encoder)
    queries = [f"query number {i}" for i in range(8)]
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        results[i] = batcher.encode(queries[i], colbert=i % 2 == 0)

    threads = [threading.Thread(target=ask, args=(0,))]
    threads[0].start()
    while not encoder.batches:  # the first query holds the encoder
        time.sleep(0.001)
    threads += [threading.Thread(target=ask, args=(i,)) for i in range(1, 8)]
    for t in threads[1:]:
        t.start()
    while len(batcher._pending) < 7:
        time.sleep(0.001)
    encoder.gate.set()
    for t in threads:
        t.join(timeout=60)

    assert [len(b) for b in encoder.batches] == [1, 7]
    alone = encoder.encode(queries, colbert=True)
    for i in range(len(queries)):
        got = results[i]
        assert np.allclose(got.dense, alone.dense[i], atol=1e-5)
        assert got.sparse == pytest.approx(alone.sparse[i], abs=1e-5)
        assert (got.colbert is None) == (i % 2 == 1)
        if got.colbert is not None:
            assert np.allclose(got.colbert, alone.colbert[i], atol=1e-5)


def test_an_encoder_error_reaches_the_caller_and_the_batcher_recovers(encoder):
    batcher = QueryBatcher(encoder)
    encoder.gate.set()
    with pytest.raises(ValueError, match="must be of type `str`"):
        batcher.encode(None)  # not a string: the tokenizer refuses it
    assert batcher.encode("still works").dense.shape == (encoder.dim,)
