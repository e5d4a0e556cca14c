"""M3 sparse vectors for langchain-qdrant (``pip install 'm3ingest[qdrant]'``)."""

from __future__ import annotations

from typing import Any

try:
    from langchain_qdrant.sparse_embeddings import SparseEmbeddings, SparseVector
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ImportError(
        "M3QdrantSparseEmbeddings needs langchain-qdrant: pip install 'm3ingest[qdrant]'"
    ) from e

from m3ingest.retrievers.shared_encoding import SharedEncoding, shared_encoding


def _vector(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices=indices, values=[float(weights[i]) for i in indices])


class M3QdrantSparseEmbeddings(SparseEmbeddings):
    """BGE-M3 lexical weights as langchain-qdrant ``SparseVector``s.

    Give it the ``M3Embeddings`` used for the dense vectors (or use
    ``M3Embeddings.qdrant_sparse()``) so both come from one forward pass; a model name or
    ``M3Encoder`` loads its own.
    """

    def __init__(self, embeddings: Any = "BAAI/bge-m3", **encoder_kwargs: Any) -> None:
        self.encoding: SharedEncoding = shared_encoding(embeddings, encoder_kwargs)

    def embed_documents(self, texts: list[str]) -> list[SparseVector]:
        """Sparse vectors of ``texts``."""
        return [_vector(w) for w in self.encoding.sparse(texts)]

    def embed_query(self, text: str) -> SparseVector:
        """Sparse vector of one query."""
        return _vector(self.encoding.sparse([text])[0])
