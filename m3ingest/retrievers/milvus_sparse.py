"""M3 sparse vectors for langchain-milvus (``pip install 'm3ingest[milvus]'``)."""

from __future__ import annotations

from typing import Any

try:
    from langchain_milvus.utils.sparse import BaseSparseEmbedding
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ImportError(
        "M3MilvusSparseEmbedding needs langchain-milvus: pip install 'm3ingest[milvus]'"
    ) from e

from m3ingest.retrievers.shared_encoding import SharedEncoding, shared_encoding


class M3MilvusSparseEmbedding(BaseSparseEmbedding):
    """BGE-M3 lexical weights as langchain-milvus sparse embeddings (token id -> weight).

    Give it the ``M3Embeddings`` used for the dense field (or use ``M3Embeddings.milvus_sparse()``)
    so both come from one forward pass; a model name or ``M3Encoder`` loads its own.
    """

    def __init__(self, embeddings: Any = "BAAI/bge-m3", **encoder_kwargs: Any) -> None:
        self.encoding: SharedEncoding = shared_encoding(embeddings, encoder_kwargs)

    def embed_query(self, query: str) -> dict[int, float]:
        """Sparse vector of one query."""
        return self.encoding.sparse([query])[0]

    def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """Sparse vectors of ``texts``."""
        return self.encoding.sparse(texts)
