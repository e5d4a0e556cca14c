"""M3 vectors for LangChain vector stores: a dense ``Embeddings`` and sparse adapters.

``M3Embeddings`` gives the dense vectors; ``.milvus_sparse()`` and ``.qdrant_sparse()`` give
adapters for langchain-milvus' ``BaseSparseEmbedding`` and langchain-qdrant's
``SparseEmbeddings`` that share its encoder and cache, so a store asking for the dense and then
the sparse vectors of the same texts gets both from one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings

from m3ingest.retrievers.shared_encoding import SharedEncoding, load_encoder

if TYPE_CHECKING:
    from m3ingest.encoder import M3Encoder
    from m3ingest.retrievers.milvus_sparse import M3MilvusSparseEmbedding
    from m3ingest.retrievers.qdrant_sparse import M3QdrantSparseEmbeddings


class M3Embeddings(Embeddings):
    """BGE-M3 dense vectors (normalised, float) as a LangChain ``Embeddings``.

    ``model`` is an ``M3Encoder`` already loaded, a hub id or a local checkpoint folder
    (``encoder_kwargs`` such as ``device=`` and ``dtype=`` go to ``M3Encoder``).
    """

    def __init__(
        self, model: M3Encoder | str = "BAAI/bge-m3", *, max_length: int = 8192, **encoder_kwargs: Any
    ) -> None:
        self.encoding = SharedEncoding(load_encoder(model, encoder_kwargs), max_length=max_length)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Dense vectors of ``texts``."""
        if not texts:
            return []
        dense = self.encoding.encode(texts).dense
        assert dense is not None  # SharedEncoding.encode asks for dense vectors
        return dense.tolist()

    def embed_query(self, text: str) -> list[float]:
        """Dense vector of one query."""
        return self.embed_documents([text])[0]

    def sparse(self, texts: Sequence[str]) -> list[dict[int, float]]:
        """Sparse (lexical) weights of ``texts``: token id -> weight."""
        return self.encoding.sparse(texts)

    def milvus_sparse(self) -> M3MilvusSparseEmbedding:
        """The sparse adapter for langchain-milvus, sharing this encoder and cache."""
        from m3ingest.retrievers.milvus_sparse import M3MilvusSparseEmbedding

        return M3MilvusSparseEmbedding(self.encoding)

    def qdrant_sparse(self) -> M3QdrantSparseEmbeddings:
        """The sparse adapter for langchain-qdrant, sharing this encoder and cache."""
        from m3ingest.retrievers.qdrant_sparse import M3QdrantSparseEmbeddings

        return M3QdrantSparseEmbeddings(self.encoding)
