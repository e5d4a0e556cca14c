"""The encode stage: a model loaded only when a chunk must be encoded, and chunks into records."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m3ingest.chunking import Chunker
    from m3ingest.config import ModelConfig
    from m3ingest.connectors import ChunkRecord
    from m3ingest.encoder import M3Encoder, M3Output
    from m3ingest.ingest.plan import Entry

log = logging.getLogger("m3ingest.ingest")


class LazyEncoder:
    """The configured checkpoint, loaded piece by piece as a run needs it.

    A run with nothing to encode loads nothing; one that only chunks loads the tokenizer; the
    weights load at the first ``encode_ids``. ``M3Encoder`` objects already loaded are wrapped
    with ``LazyEncoder.of``.
    """

    def __init__(
        self, model: ModelConfig, *, device: str | None = None, longest: int | None = None
    ) -> None:
        self._config = model
        self._device = device
        #: The longest input expected (a chunk's tokens): on CUDA the batch shapes up to it are
        #: prepared at load, so that none is met for the first time mid-run.
        self._longest = longest
        self._encoder: M3Encoder | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, encoder: M3Encoder) -> LazyEncoder:
        """A handle on an encoder that is already loaded."""
        from m3ingest.config import ModelConfig

        handle = cls(ModelConfig(name=str(encoder.path), revision=getattr(encoder, "revision", None)))
        handle._encoder = encoder
        return handle

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    @cached_property
    def path(self) -> Path:
        """The local folder of the checkpoint: a hub id's snapshot from the cache, downloaded only
        when it is not there yet."""
        if self._encoder is not None:
            return Path(self._encoder.path)
        from m3ingest.encoder.checkpoint import cached_checkpoint, resolve_checkpoint

        c = self._config
        return cached_checkpoint(c.name, c.revision) or resolve_checkpoint(c.name, c.revision)

    @cached_property
    def dim(self) -> int:
        """The dense vector size, read from the checkpoint's config without loading weights."""
        if self._encoder is not None:
            return self._encoder.dim
        from m3ingest.encoder.checkpoint import model_dim

        return model_dim(self.path)

    @cached_property
    def fingerprint(self) -> str:
        """What changes whenever the checkpoint's files do (see ``checkpoint.fingerprint``)."""
        from m3ingest.encoder.checkpoint import fingerprint

        return fingerprint(self.path)

    @cached_property
    def tokenizer(self) -> Any:
        """The model's tokenizer (loaded without the weights)."""
        if self._encoder is not None:
            return self._encoder.tokenizer
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)

    def chunker(self, chunk_size: int, overlap: int) -> Chunker:
        """A chunker with the model's tokenizer (one chunker may serve several threads)."""
        from m3ingest.chunking import Chunker

        return Chunker(self.tokenizer, chunk_size=chunk_size, overlap=overlap)

    @property
    def encoder(self) -> M3Encoder:
        """The loaded encoder (loaded now if it was not)."""
        with self._lock:
            if self._encoder is None:
                from m3ingest.encoder import M3Encoder

                config = self._config
                if self._device is not None:
                    config = config.model_copy(update={"device": self._device})
                encoder = M3Encoder.from_config(config)
                if self._longest is not None:
                    encoder.warmup(self._longest)
                self._encoder = encoder
            return self._encoder

    def load(self, weights: bool = True) -> None:
        """Get the checkpoint now (its config; with ``weights`` the whole model), so that a
        model that cannot be had fails here rather than mid-run."""
        _ = self.encoder if weights else self.dim

    def encode_ids(self, token_ids: Sequence[Sequence[int]], **kwargs: Any) -> M3Output:
        return self.encoder.encode_ids(token_ids, **kwargs)


def encode_entries(
    encoder: LazyEncoder | M3Encoder,
    sources: Sequence[str],
    entries: Sequence[Entry],
    colbert: bool,
) -> list[ChunkRecord]:
    """The store records of ``entries`` (chunks of the files ``sources`` names, one each)."""
    from m3ingest.connectors import ChunkRecord

    out = encoder.encode_ids([e.chunk.token_ids for e in entries], dense=True, sparse=True, colbert=colbert)
    assert out.dense is not None and out.sparse is not None
    return [
        ChunkRecord(
            id=e.id,
            text=e.chunk.text,
            source=source,
            chunk_index=e.chunk.index,
            start=e.chunk.start,
            end=e.chunk.end,
            content_hash=e.content_hash,
            metadata=e.metadata,
            dense=out.dense[i],
            sparse=out.sparse[i],
            colbert=out.colbert[i] if colbert and out.colbert is not None else None,
        )
        for i, (e, source) in enumerate(zip(entries, sources, strict=True))
    ]
