"""How the backbone's fixed-shape pass runs: eagerly, compiled, or replayed from CUDA graphs.

Every runner is called as ``runner(input_ids, lengths, masked) -> last hidden state`` with a
(rows, length) batch. A compile or capture failure is logged once and that runner goes on
eagerly: a faster path never breaks encoding.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("m3ingest.encoder")

Runner = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]

EXECUTIONS = ("auto", "eager", "graphs", "compile", "compile+graphs")

# CUDA graphs allow one capture at a time in a process; devices capture in their own threads.
_CAPTURE_LOCK = threading.Lock()


def resolve_execution(execution: str, device: torch.device) -> str:
    """The execution mode for ``device``: "auto" is CUDA graphs on CUDA and eager elsewhere."""
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution {execution!r}; use one of {', '.join(EXECUTIONS)}")
    if execution == "auto":
        return "graphs" if device.type == "cuda" else "eager"
    return execution


def make_runner(
    fn: Runner,
    execution: str,
    device: torch.device,
    hidden_size: int,
    dtype: torch.dtype,
    capacity: tuple[int, int] = (0, 0),
) -> Runner:
    """``fn`` (the eager pass) wrapped as ``execution`` ("eager", "graphs", "compile",
    "compile+graphs") asks; ``capacity``: (tokens, rows) of the largest batch expected."""
    if execution in ("compile", "compile+graphs"):
        fn = Compiled(fn, device)
    if execution in ("graphs", "compile+graphs"):
        return GraphRunner(fn, device, hidden_size, dtype, capacity)
    return fn


class Compiled:
    """``torch.compile`` of a pass with dynamic shapes (one compilation serves the whole grid)."""

    def __init__(self, fn: Runner, device: torch.device) -> None:
        self._eager = fn
        self._device = device
        self._compiled: Runner | None = None
        self._failed = False

    def __call__(self, input_ids: torch.Tensor, lengths: torch.Tensor, masked: bool) -> torch.Tensor:
        if not self._failed:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self._eager, dynamic=True)
                return self._compiled(input_ids, lengths, masked)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                self._failed = True
                logger.warning(
                    "torch.compile failed on %s (%s: %s); encoding goes on eagerly",
                    self._device,
                    type(exc).__name__,
                    exc,
                )
        return self._eager(input_ids, lengths, masked)


class GraphRunner:
    """A pass replayed from one CUDA graph per (rows, length, masked), captured on first use.

    All graphs share one memory pool and one set of static input and output buffers, so memory
    stays that of the largest shape whatever the number of graphs. Replays are serialised by the
    caller (one replica, one stream); a result is only valid until the next call.
    """

    def __init__(
        self,
        fn: Runner,
        device: torch.device,
        hidden_size: int,
        dtype: torch.dtype,
        capacity: tuple[int, int] = (0, 0),
    ) -> None:
        self._fn = fn
        self._capacity = capacity
        self._device = device
        self._hidden_size = hidden_size
        self._dtype = dtype
        self._graphs: dict[tuple[int, int, bool], torch.cuda.CUDAGraph | None] = {}
        self._pool: Any = None  # a graph memory pool handle
        self._stream: torch.cuda.Stream | None = None
        self._buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._failed = False

    def __call__(self, input_ids: torch.Tensor, lengths: torch.Tensor, masked: bool) -> torch.Tensor:
        if self._failed:
            return self._fn(input_ids, lengths, masked)
        rows, width = input_ids.shape
        key = (rows, width, masked)
        if key not in self._graphs:
            return self._first_use(key, input_ids, lengths)
        graph = self._graphs[key]
        if graph is None:  # capture ran out of memory for this shape
            return self._fn(input_ids, lengths, masked)
        static_ids, static_lengths, static_out = self._views(rows, width)
        static_ids.copy_(input_ids, non_blocking=True)
        static_lengths.copy_(lengths, non_blocking=True)
        graph.replay()
        return static_out

    def _first_use(self, key: tuple[int, int, bool], input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        masked = key[2]
        try:
            hidden = self._eager_on_capture_stream(input_ids, lengths, masked)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            self._disable(exc)
            return self._fn(input_ids, lengths, masked)
        try:
            self._capture(key)
        except torch.OutOfMemoryError:
            self._graphs[key] = None  # the pass fits, its graph's memory does not
            logger.info("no memory to capture a CUDA graph for %s on %s; eager there", key, self._device)
        except Exception as exc:
            self._disable(exc)
        return hidden

    def _eager_on_capture_stream(self, input_ids: torch.Tensor, lengths: torch.Tensor, masked: bool) -> torch.Tensor:
        # PyTorch asks for a pass on the capture stream before capturing (lazy initialisations
        # such as cuBLAS workspaces must happen outside the capture); it also serves this batch.
        if self._stream is None:
            self._stream = torch.cuda.Stream(self._device)
            self._pool = torch.cuda.graph_pool_handle()
        current = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            hidden = self._fn(input_ids, lengths, masked)
        current.wait_stream(self._stream)
        hidden.record_stream(current)
        return hidden

    def _disable(self, exc: Exception) -> None:
        self._failed = True
        self._graphs.clear()
        logger.warning(
            "CUDA graph capture failed on %s (%s: %s); encoding goes on eagerly",
            self._device,
            type(exc).__name__,
            exc,
        )

    def _capture(self, key: tuple[int, int, bool]) -> None:
        rows, width, masked = key
        self._ensure_buffers(rows * width, rows)
        static_ids, static_lengths, static_out = self._views(rows, width)
        static_lengths.fill_(width)
        graph = torch.cuda.CUDAGraph()
        with (
            _CAPTURE_LOCK,
            torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"),
        ):
            static_out.copy_(self._fn(static_ids, static_lengths, masked))
        self._graphs[key] = graph

    def _ensure_buffers(self, tokens: int, rows: int) -> None:
        buffers = self._buffers
        if buffers is not None and buffers[0].numel() >= tokens and buffers[1].numel() >= rows:
            return
        tokens, rows = max(tokens, self._capacity[0]), max(rows, self._capacity[1])
        if self._buffers is not None:  # graphs point into the old buffers: capture again
            tokens = max(tokens, 2 * self._buffers[0].numel())
            rows = max(rows, 2 * self._buffers[1].numel())
            self._graphs.clear()
        dev = self._device
        self._buffers = (
            torch.zeros(tokens, dtype=torch.long, device=dev),
            torch.zeros(rows, dtype=torch.long, device=dev),
            torch.zeros(tokens * self._hidden_size, dtype=self._dtype, device=dev),
        )

    def _views(self, rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self._buffers is not None
        ids, lengths, out = self._buffers
        return (
            ids[: rows * width].view(rows, width),
            lengths[:rows],
            out[: rows * width * self._hidden_size].view(rows, width, self._hidden_size),
        )
