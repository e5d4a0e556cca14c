"""``M3Encoder``: texts or token ids in, BGE-M3 dense / sparse / ColBERT vectors out."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from m3ingest.encoder.batching import split_on_oom
from m3ingest.encoder.checkpoint import (
    COLBERT_HEAD,
    SPARSE_HEAD,
    missing_head_error,
    resolve_checkpoint,
)
from m3ingest.encoder.model import M3Model, load_linear_head
from m3ingest.encoder.precision import overflow_fallback_dtype, resolve_devices, resolve_dtype
from m3ingest.encoder.replica import Pending, Replica, Row, Want
from m3ingest.encoder.runners import EXECUTIONS, resolve_execution
from m3ingest.encoder.shapes import BatchShapes, BucketShapes, ExactShapes
from m3ingest.encoder.truncation import truncated_ids
from m3ingest.encoder.workqueue import run_queue

logger = logging.getLogger("m3ingest.encoder")

SHAPES = ("auto", "grid", "buckets", "exact")


@dataclass
class M3Output:
    """Vectors for each input, in input order; None for outputs not asked for.

    ``dense``: (n, dim) float32, L2-normalised CLS vectors. ``sparse``: token id -> max weight,
    special tokens and weights <= 0 dropped. ``colbert``: per input a (tokens - 1, dim) float32
    array of normalised vectors for every token after CLS, EOS included.
    """

    dense: np.ndarray | None
    sparse: list[dict[int, float]] | None
    colbert: list[np.ndarray] | None


class M3Encoder:
    """A BGE-M3 checkpoint (hub id or local directory in the ``BAAI/bge-m3`` layout), ready to encode.

    ``device``: None (CUDA if available, else CPU), a name ("cpu", "cuda:1") or a list of names
    that then share each call's batches through a work queue. ``dtype``: "auto", "float32",
    "bfloat16" or "float16". ``batch_tokens``: padded tokens per forward pass. ``revision``: the
    hub branch, tag or commit of a hub id. ``warmup``: on CUDA, run every batch shape once now
    (True), or those for inputs of up to that many tokens (an int), so that first uses and graph
    captures happen at load. ``shapes``: "grid" pads batches to a fixed grid of (rows, length)
    shapes, "buckets" pads each input to a (finer) length bucket only, "exact" pads batches to
    their longest input; "auto" is grid on CUDA, buckets on CPU (``shapes`` module). ``execution``:
    "eager", "graphs" (CUDA graphs per shape), "compile" (``torch.compile``), "compile+graphs";
    "auto" is graphs on CUDA, eager on CPU. Safe to call from several threads at once.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = "BAAI/bge-m3",
        device: str | Sequence[str] | None = None,
        dtype: str | torch.dtype = "auto",
        batch_tokens: int = 16384,
        *,
        revision: str | None = None,
        warmup: bool | int = False,
        shapes: str = "auto",
        execution: str = "auto",
    ) -> None:
        from transformers import AutoTokenizer

        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        if shapes not in SHAPES:
            raise ValueError(f"unknown shapes {shapes!r}; use one of {', '.join(SHAPES)}")
        if execution not in EXECUTIONS:
            raise ValueError(f"unknown execution {execution!r}; use one of {', '.join(EXECUTIONS)}")
        self.model_name = str(model)
        self.revision = revision
        self.path = resolve_checkpoint(model, revision)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.batch_tokens = batch_tokens
        self._tokenizer_lock = threading.Lock()
        colbert_state = load_linear_head(self.path, COLBERT_HEAD)
        sparse_state = load_linear_head(self.path, SPARSE_HEAD)
        tok = self.tokenizer
        specials = (tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
        ignored = sorted({t for t in specials if t is not None})
        self.devices = resolve_devices(device)
        self.device = self.devices[0]

        def load(dev: torch.device, dt: torch.dtype) -> M3Model:
            return M3Model(self.path, colbert_state, sparse_state, ignored, dev, dt)

        models = {dev: load(dev, resolve_dtype(dtype, dev)) for dev in dict.fromkeys(self.devices)}
        first = models[self.device]
        self.dtype: torch.dtype = first.dtype
        self.config = first.backbone.config  # the backbone's transformers config
        self.dim: int = int(self.config.hidden_size)
        self.colbert_dim: int | None = first.colbert_head.out_features if first.colbert_head is not None else None
        self.max_length: int = int(self.config.max_position_embeddings) - first.pad_id - 1
        self._has = {"sparse": sparse_state is not None, "colbert": colbert_state is not None}
        if shapes == "auto":
            shapes = "grid" if any(d.type == "cuda" for d in self.devices) else "buckets"
        self._shapes: BatchShapes = (
            BucketShapes(self.max_length)
            if shapes == "grid"
            else BucketShapes.cpu(self.max_length)
            if shapes == "buckets"
            else ExactShapes()
        )
        capacity = (max(batch_tokens, self.max_length), max(1, batch_tokens // 16))
        self._replicas: dict[torch.device, Replica] = {}
        for dev, m in models.items():
            fallback = None
            if m.dtype == torch.float16:
                fallback = lambda dev=dev: load(dev, overflow_fallback_dtype(dev))  # noqa: E731
            run = resolve_execution(execution, dev)
            self._replicas[dev] = Replica(m, self._shapes, run, capacity, fallback)
            logger.info("M3 encoder %s on %s in %s (%s)", self.model_name, dev, m.dtype, run)
        if warmup:
            self.warmup(None if warmup is True else int(warmup))

    @classmethod
    def from_config(cls, model_config: Any) -> M3Encoder:
        """The encoder a model configuration describes: its ``name``, ``revision``, ``device``,
        ``dtype`` and ``batch_tokens`` (the ``[model]`` section, ``m3ingest.config.ModelConfig``)."""
        c = model_config
        return cls(c.name, device=c.device, dtype=c.dtype, batch_tokens=c.batch_tokens, revision=c.revision)

    def warmup(self, up_to: int | None = None) -> None:
        """On CUDA, run each batch shape for inputs of up to ``up_to`` tokens (default: the
        model's maximum) once, so that no first use (or CUDA graph capture) happens mid-run."""
        if not isinstance(self._shapes, BucketShapes) or not self._shapes.pad_rows:
            return
        grid = self._shapes.grid(self.batch_tokens, up_to)
        for replica in self._replicas.values():
            if replica.device.type == "cuda":
                replica.warm(grid, unmasked_up_to=grid[-1][1])

    def tokenize(self, texts: Sequence[str], max_length: int = 8192) -> list[list[int]]:
        """Token ids of each text with ``<s>`` and ``</s>``, truncated to ``max_length`` ids.

        Only as much of a long text as truncation keeps is tokenized (see ``truncation``); the
        ids are those of the whole text, truncated.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string; wrap it in a list")
        if not texts:
            return []

        def tokenize(batch: list[str]) -> list[list[int]]:
            with self._tokenizer_lock:  # a fast tokenizer's truncation setting is shared state
                return self.tokenizer(batch, truncation=True, max_length=max_length)["input_ids"]

        return truncated_ids(list(texts), max_length, tokenize)

    def token_strings(self, sparse: dict[int, float]) -> dict[str, float]:
        """A sparse vector keyed by readable token strings (the larger weight where two coincide)."""
        out: dict[str, float] = {}
        for token_id, weight in sparse.items():
            text = str(self.tokenizer.decode([int(token_id)]))
            out[text] = max(weight, out.get(text, weight))
        return out

    def encode(
        self,
        texts: Sequence[str],
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = False,
        max_length: int = 8192,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> M3Output:
        """The asked vectors for ``texts`` (queries and passages alike), from one forward pass each."""
        self._check_heads(sparse, colbert)
        return self.encode_ids(
            self.tokenize(texts, max_length),
            dense=dense,
            sparse=sparse,
            colbert=colbert,
            batch_tokens=batch_tokens,
            show_progress=show_progress,
        )

    def encode_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = False,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> M3Output:
        """Like ``encode`` for inputs already tokenized with ``<s>`` ... ``</s>``."""
        self._check_heads(sparse, colbert)
        lengths = [len(ids) for ids in token_ids]
        if any(n == 0 for n in lengths):
            raise ValueError("an input has no token ids; tokenized inputs must include <s> and </s>")
        if lengths and max(lengths) > self.max_length:
            raise ValueError(f"an input has {max(lengths)} token ids; the model takes at most {self.max_length}")
        budget = batch_tokens or self.batch_tokens
        batches = self._shapes.plan(lengths, budget)
        want = Want(dense=dense, sparse=sparse, colbert=colbert)
        workers = [self._worker(self._replicas[dev], token_ids, want, budget) for dev in self.devices]
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(lengths), desc="Encoding", unit="text")
        try:
            rows_per_batch = run_queue(
                batches,
                workers,
                on_done=(lambda b: progress.update(len(b))) if progress else None,
                in_flight=1,
            )
        finally:
            if progress is not None:
                progress.close()
        out = M3Output(
            dense=np.zeros((len(lengths), self.dim), np.float32) if dense else None,
            sparse=[{}] * len(lengths) if sparse else None,
            colbert=[np.zeros((0, self.colbert_dim or 0), np.float32)] * len(lengths) if colbert else None,
        )
        for batch, batch_rows in zip(batches, rows_per_batch, strict=True):
            for index, (d, s, c) in zip(batch, batch_rows, strict=True):
                if out.dense is not None and d is not None:
                    out.dense[index] = d
                if out.sparse is not None and s is not None:
                    out.sparse[index] = s
                if out.colbert is not None and c is not None:
                    out.colbert[index] = c
        return out

    def _check_heads(self, sparse: bool, colbert: bool) -> None:
        if sparse and not self._has["sparse"]:
            raise missing_head_error(self.path, SPARSE_HEAD, "sparse")
        if colbert and not self._has["colbert"]:
            raise missing_head_error(self.path, COLBERT_HEAD, "colbert")

    def _worker(
        self, replica: Replica, token_ids: Sequence[Sequence[int]], want: Want, batch_tokens: int
    ) -> Callable[[list[int]], Callable[[], list[Row]]]:
        """A function that submits one planned batch (indices into ``token_ids``) to ``replica``
        and returns the function that waits for its rows."""
        device = replica.device

        def describe(seqs: list[Sequence[int]]) -> str:
            return f"{len(seqs)} input(s) of up to {max(len(s) for s in seqs)} tokens on {device}"

        def after_oom() -> None:
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.empty_cache()

        def submit(batch: list[int]) -> Callable[[], list[Row]]:
            parts: list[tuple[list[Sequence[int]], Pending]] = split_on_oom(
                [token_ids[i] for i in batch],
                lambda seqs: replica.submit(seqs, want, batch_tokens),
                describe=describe,
                after_oom=after_oom,
            )
            return lambda: [row for _, pending in parts for row in replica.finish(pending)]

        return submit
