"""One forward pass shared by the dense and sparse LangChain adapters of the same texts."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m3ingest.encoder import M3Encoder, M3Output


class SharedEncoding:
    """Dense and sparse vectors of text batches, one forward pass each, the last few cached."""

    def __init__(self, encoder: M3Encoder, max_length: int = 8192, cache_batches: int = 4) -> None:
        self.encoder = encoder
        self.max_length = max_length
        self.cache_batches = cache_batches
        self._cache: OrderedDict[tuple[str, ...], M3Output] = OrderedDict()
        self._lock = threading.Lock()

    def sparse(self, texts: Sequence[str]) -> list[dict[int, float]]:
        """Sparse (lexical) weights of ``texts``: token id -> weight."""
        if not texts:
            return []
        out = self.encode(texts)
        assert out.sparse is not None
        return [dict(s) for s in out.sparse]

    def encode(self, texts: Sequence[str]) -> M3Output:
        """Both kinds of vectors of ``texts``; a batch asked for again is served from the cache."""
        key = tuple(texts)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        out = self.encoder.encode(list(texts), dense=True, sparse=True, max_length=self.max_length)
        with self._lock:
            self._cache[key] = out
            while len(self._cache) > self.cache_batches:
                self._cache.popitem(last=False)
        return out


def load_encoder(model: M3Encoder | str, encoder_kwargs: dict[str, Any]) -> M3Encoder:
    """``model`` when it is an ``M3Encoder`` already, else the encoder of that checkpoint."""
    from m3ingest.encoder import M3Encoder

    return model if isinstance(model, M3Encoder) else M3Encoder(model, **encoder_kwargs)


def shared_encoding(source: Any, encoder_kwargs: dict[str, Any]) -> SharedEncoding:
    """The encoding of ``source``: an ``M3Embeddings`` (or its ``SharedEncoding``), an
    ``M3Encoder``, or a checkpoint to load."""
    encoding = getattr(source, "encoding", source)
    if isinstance(encoding, SharedEncoding):
        return encoding
    return SharedEncoding(load_encoder(source, encoder_kwargs))
