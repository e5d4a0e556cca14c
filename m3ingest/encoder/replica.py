"""One copy of the model on one device: a batch of token ids in, one row of outputs per input out.

``submit`` builds the padded batch on the host, queues its copy to the device, the forward pass
and the copies of the outputs back, and returns without waiting; ``finish`` waits for that batch
and cuts its outputs into rows. Between the two, the caller submits the next batch, so the
device always has work queued while the host prepares and finishes batches. On CUDA the host
tensors are pinned and every copy is asynchronous; nothing in ``submit`` waits for the device.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from m3ingest.encoder.batching import split_on_oom
from m3ingest.encoder.model import DeviceOutputs, M3Model
from m3ingest.encoder.rows import colbert_rows, sparse_rows
from m3ingest.encoder.runners import Runner, make_runner
from m3ingest.encoder.shapes import BatchShapes

logger = logging.getLogger("m3ingest.encoder")

Row = tuple["np.ndarray | None", "dict[int, float] | None", "np.ndarray | None"]


@dataclass
class Want:
    """The outputs asked for."""

    dense: bool
    sparse: bool
    colbert: bool


@dataclass
class Pending:
    """A submitted batch: what ``finish`` needs once the device is done."""

    seqs: list[Sequence[int]]
    ids: np.ndarray  # (n, length) host copy of the real rows' token ids
    outputs: DeviceOutputs  # on the host (pinned on CUDA), valid once ``done`` has happened
    done: torch.cuda.Event | None
    want: Want
    batch_tokens: int


class Replica:
    """The model on one device, with the runner for its passes and its float16 overflow guard.

    ``make_fallback`` builds (once, on first need) the model that recomputes a float16 batch
    whose outputs are not finite.
    """

    def __init__(
        self,
        model: M3Model,
        shapes: BatchShapes,
        execution: str,
        capacity: tuple[int, int],
        make_fallback: Callable[[], M3Model] | None = None,
    ) -> None:
        self.model = model
        self.device = model.device
        self.shapes = shapes
        self.runner: Runner = make_runner(
            model.hidden,
            execution,
            self.device,
            int(model.backbone.config.hidden_size),
            model.dtype,
            capacity,
        )
        self.check_finite = model.dtype == torch.float16 and make_fallback is not None
        self._make_fallback = make_fallback
        self._fallback: Replica | None = None
        self._fallback_lock = threading.Lock()
        # One batch at a time through the runner: graphs share static buffers.
        self._lock = threading.Lock()
        self._cuda = self.device.type == "cuda"

    def submit(self, seqs: list[Sequence[int]], want: Want, batch_tokens: int) -> Pending:
        """Queue one batch (token id lists with ``<s>`` ... ``</s>``) on the device."""
        n = len(seqs)
        lengths = [len(s) for s in seqs]
        rows, width = self.shapes.shape(lengths, batch_tokens)
        ids = torch.full((rows, width), self.model.pad_id, dtype=torch.long, pin_memory=self._cuda)
        host_ids = ids.numpy()
        for r, seq in enumerate(seqs):
            host_ids[r, : lengths[r]] = seq
        # Padding rows repeat the first input: valid tokens, and no mask when it needs none.
        host_ids[n:] = host_ids[0]
        row_lengths = lengths + [lengths[0]] * (rows - n)
        masked = min(row_lengths) < width
        host_lengths = torch.tensor(row_lengths, dtype=torch.long, pin_memory=self._cuda)
        index = None
        if want.colbert:
            positions = np.concatenate([r * width + np.arange(1, k) for r, k in enumerate(lengths)])
            index = torch.from_numpy(positions.astype(np.int64))
            if self._cuda:
                index = index.pin_memory()
        with self._on_device():
            device_ids = ids.to(self.device, non_blocking=True)
            hidden = self.runner(device_ids, host_lengths.to(self.device, non_blocking=True), masked)
            out = self.model.heads(
                hidden,
                device_ids,
                n,
                index.to(self.device, non_blocking=True) if index is not None else None,
                dense=want.dense,
                sparse=want.sparse,
                check_finite=self.check_finite,
            )
            host = DeviceOutputs(*(self._to_host(t) for t in (out.dense, out.sparse, out.colbert, out.finite)))
            done = None
            if self._cuda:
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(self.device))
        return Pending(seqs, host_ids[:n], host, done, want, batch_tokens)

    def finish(self, pending: Pending) -> list[Row]:
        """The rows of a submitted batch, in its order, once the device has computed them."""
        if pending.done is not None:
            pending.done.synchronize()
        out = pending.outputs
        if out.finite is not None and not bool(out.finite):
            return self._recompute(pending)
        n = len(pending.seqs)
        dense: list[np.ndarray | None] = [None] * n
        sparse: list[dict[int, float] | None] = [None] * n
        colbert: list[np.ndarray | None] = [None] * n
        if out.dense is not None:
            dense = list(self._array(out.dense))
        if out.sparse is not None:
            sparse = list(sparse_rows(out.sparse.numpy(), pending.ids))
        if out.colbert is not None:
            colbert = list(colbert_rows(self._array(out.colbert), [len(s) for s in pending.seqs]))
        return list(zip(dense, sparse, colbert, strict=True))

    def _array(self, t: torch.Tensor) -> np.ndarray:
        # Copied out of a pinned transfer buffer, so the buffer is reused at once rather than
        # held (scarce page-locked memory) for as long as the caller keeps the vectors.
        return t.numpy().copy() if self._cuda else t.numpy()

    def warm(self, shapes: Sequence[tuple[int, int]], unmasked_up_to: int = 0) -> None:
        """One pass per (rows, length) shape, so first uses (and graph captures) happen now;
        shapes of length ``unmasked_up_to`` also run without padding (full fixed-size chunks)."""
        with self._on_device():
            for rows, width in shapes:
                ids = torch.full((rows, width), self.model.pad_id, device=self.device)
                for masked in (True, False) if width == unmasked_up_to else (True,):
                    lengths = torch.full((rows,), width - int(masked), device=self.device)
                    self.runner(ids, lengths, masked)
            if self._cuda:
                torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def _on_device(self) -> Iterator[None]:
        """This replica's turn at its runner, in inference mode, with its device current."""
        device = torch.cuda.device(self.device) if self._cuda else contextlib.nullcontext()
        with self._lock, torch.inference_mode(), device:
            yield

    def _to_host(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or not self._cuda:
            return t
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host

    def _recompute(self, pending: Pending) -> list[Row]:
        fallback = self._fallback_replica()
        parts = split_on_oom(list(pending.seqs), lambda part: fallback.submit(part, pending.want, pending.batch_tokens))
        return [row for _, sub in parts for row in fallback.finish(sub)]

    def _fallback_replica(self) -> Replica:
        with self._fallback_lock:
            if self._fallback is None:
                assert self._make_fallback is not None
                model = self._make_fallback()
                logger.warning(
                    "float16 overflow on %s: a batch gave inf/NaN outputs and is computed again in %s "
                    "(so is any later such batch; logged once)",
                    self.device,
                    model.dtype,
                )
                self._fallback = Replica(model, self.shapes, "eager", (0, 0))
            return self._fallback
