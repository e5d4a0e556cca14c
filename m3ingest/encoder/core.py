"""``M3Encoder``: texts or token ids in, BGE-M3 dense / sparse / ColBERT vectors out."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from m3ingest.encoder.batching import plan_batches, run_with_backoff
from m3ingest.encoder.checkpoint import (
    COLBERT_HEAD,
    SPARSE_HEAD,
    load_linear_head,
    missing_head_error,
    resolve_checkpoint,
)
from m3ingest.encoder.model import M3Model
from m3ingest.encoder.precision import resolve_devices, resolve_dtype
from m3ingest.encoder.workqueue import run_queue

logger = logging.getLogger("m3ingest.encoder")

_Row = tuple["np.ndarray | None", "dict[int, float] | None", "np.ndarray | None"]


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
    "bfloat16" or "float16". ``batch_tokens``: padded tokens per forward pass. Safe to call from
    several threads at once.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = "BAAI/bge-m3",
        device: str | Sequence[str] | None = None,
        dtype: str | torch.dtype = "auto",
        batch_tokens: int = 16384,
    ) -> None:
        from transformers import AutoTokenizer

        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        self.model_name = str(model)
        self.path = resolve_checkpoint(model)
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
        replicas: dict[torch.device, M3Model] = {}
        for dev in self.devices:
            if dev not in replicas:
                replicas[dev] = M3Model(
                    self.path, colbert_state, sparse_state, ignored, dev, resolve_dtype(dtype, dev)
                )
        self._replicas = replicas
        first = replicas[self.device]
        self.dtype: torch.dtype = first.backbone.dtype
        self.config = first.backbone.config  # the backbone's transformers config
        self.dim: int = int(first.backbone.config.hidden_size)
        self.colbert_dim: int | None = (
            first.colbert_head.out_features if first.colbert_head is not None else None
        )
        self.max_length: int = int(first.backbone.config.max_position_embeddings) - first.pad_id - 1
        self._has = {"sparse": sparse_state is not None, "colbert": colbert_state is not None}
        self._pad_id = first.pad_id
        for dev, replica in replicas.items():
            logger.info("M3 encoder %s on %s in %s", self.model_name, dev, replica.backbone.dtype)

    def tokenize(self, texts: Sequence[str], max_length: int = 8192) -> list[list[int]]:
        """Token ids of each text with ``<s>`` and ``</s>``, truncated to ``max_length`` ids."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string; wrap it in a list")
        if not texts:
            return []
        with self._tokenizer_lock:  # a fast tokenizer's truncation setting is shared state
            return self.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]

    def token_strings(self, sparse: dict[int, float]) -> dict[str, float]:
        """A sparse vector keyed by readable token strings (the larger weight where two coincide)."""
        out: dict[str, float] = {}
        for token_id, weight in sparse.items():
            text = self.tokenizer.decode([int(token_id)])
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
            raise ValueError(
                f"an input has {max(lengths)} token ids; the model takes at most {self.max_length}"
            )
        batches = plan_batches(lengths, batch_tokens or self.batch_tokens)
        want = {"dense": dense, "sparse": sparse, "colbert": colbert}
        workers = [self._worker(dev, token_ids, want) for dev in self.devices]
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(lengths), desc="Encoding", unit="text")
        try:
            rows_per_batch = run_queue(
                batches, workers, on_done=(lambda b: progress.update(len(b))) if progress else None
            )
        finally:
            if progress is not None:
                progress.close()
        rows: list[_Row] = [None] * len(lengths)  # type: ignore[list-item]
        for batch, batch_rows in zip(batches, rows_per_batch):
            for index, row in zip(batch, batch_rows):
                rows[index] = row
        return M3Output(
            dense=(
                np.stack([r[0] for r in rows]) if rows else np.zeros((0, self.dim), np.float32)
            )
            if dense
            else None,
            sparse=[r[1] for r in rows] if sparse else None,
            colbert=[r[2] for r in rows] if colbert else None,
        )

    def _check_heads(self, sparse: bool, colbert: bool) -> None:
        if sparse and not self._has["sparse"]:
            raise missing_head_error(self.path, SPARSE_HEAD, "sparse")
        if colbert and not self._has["colbert"]:
            raise missing_head_error(self.path, COLBERT_HEAD, "colbert")

    def _worker(
        self, device: torch.device, token_ids: Sequence[Sequence[int]], want: dict[str, bool]
    ) -> Callable[[list[int]], list[_Row]]:
        """A function encoding one planned batch (indices into ``token_ids``) on ``device``."""
        replica = self._replicas[device]

        def describe(seqs: list[Sequence[int]]) -> str:
            return f"{len(seqs)} input(s) of up to {max(len(s) for s in seqs)} tokens on {device}"

        def after_oom() -> None:
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.empty_cache()

        def work(batch: list[int]) -> list[_Row]:
            seqs = [token_ids[i] for i in batch]
            return run_with_backoff(
                seqs,
                lambda part: self._forward(replica, device, part, want),
                describe=describe,
                after_oom=after_oom,
            )

        return work

    def _forward(
        self,
        replica: M3Model,
        device: torch.device,
        seqs: list[Sequence[int]],
        want: dict[str, bool],
    ) -> list[_Row]:
        lengths = [len(s) for s in seqs]
        width = max(lengths)
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        out = replica(ids.to(device), mask.to(device), **want)

        n = len(seqs)
        dense_rows: list[np.ndarray | None] = [None] * n
        sparse_rows: list[dict[int, float] | None] = [None] * n
        colbert_rows: list[np.ndarray | None] = [None] * n
        if out.dense is not None:
            dense_rows = list(out.dense.cpu().numpy())
        if out.sparse_rows is not None:
            owner = out.sparse_rows.cpu().numpy()
            token = out.sparse_ids.cpu().tolist()
            weight = out.sparse_weights.cpu().tolist()
            bounds = np.searchsorted(owner, np.arange(n + 1))
            sparse_rows = [
                dict(zip(token[bounds[r] : bounds[r + 1]], weight[bounds[r] : bounds[r + 1]]))
                for r in range(n)
            ]
        if out.colbert is not None:
            flat = out.colbert.cpu().numpy()
            colbert_rows = np.split(flat, np.cumsum([k - 1 for k in lengths])[:-1])
        return list(zip(dense_rows, sparse_rows, colbert_rows))
