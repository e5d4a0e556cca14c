"""Query encoding shared by concurrent callers: queries that arrive together share one batch."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from m3ingest.encoder import M3Encoder


@dataclass
class QueryVectors:
    """One query's M3 vectors; ``colbert`` only when asked for."""

    dense: np.ndarray
    sparse: dict[int, float]
    colbert: np.ndarray | None = None


@dataclass
class _Request:
    query: str
    colbert: bool
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: QueryVectors | None = None
    error: BaseException | None = None


class QueryBatcher:
    """Encodes queries from many threads, batching those that wait while the encoder is busy.

    One caller at a time runs the encoder on every query pending (up to ``max_batch``); callers
    arriving meanwhile queue, and when the batch ends the oldest of them runs the next one. A lone
    query is encoded at once, on its own; under load the model runs fewer, fuller batches instead
    of competing forward passes.
    """

    def __init__(self, encoder: M3Encoder, max_length: int = 8192, max_batch: int = 64) -> None:
        self.encoder = encoder
        self.max_length = max_length
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Request] = []
        self._busy = False

    def encode(self, query: str, colbert: bool = False) -> QueryVectors:
        """Dense and sparse vectors of ``query`` (and ColBERT vectors when ``colbert``)."""
        request = _Request(query, colbert)
        with self._lock:
            self._pending.append(request)
            if not self._busy:
                self._busy = request.lead = True
        if not request.lead:
            request.done.wait()
        if request.lead and request.result is None and request.error is None:
            self._run_batch()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _run_batch(self) -> None:
        with self._lock:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
        try:
            out = self.encoder.encode(
                [r.query for r in batch],
                dense=True,
                sparse=True,
                colbert=any(r.colbert for r in batch),
                max_length=self.max_length,
            )
            assert out.dense is not None and out.sparse is not None  # asked for, so encode filled them
            for i, r in enumerate(batch):
                colbert = None
                if r.colbert:
                    assert out.colbert is not None  # asked for, as this request wants them
                    colbert = out.colbert[i]
                r.result = QueryVectors(out.dense[i], out.sparse[i], colbert)
        except BaseException as e:  # handed to every caller of the batch, re-raised there
            for r in batch:
                r.error = e
        with self._lock:
            successor = self._pending[0] if self._pending else None
            if successor is not None:
                successor.lead = True
            else:
                self._busy = False
        for r in batch:
            r.done.set()
        if successor is not None:
            successor.done.set()
