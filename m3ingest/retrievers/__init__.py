"""Retrieval over ingested collections: a plain searcher, a LangChain retriever, embedding adapters.

Names are imported on first use, so ``M3Searcher`` works without LangChain's optional partner
packages and ``import m3ingest.retrievers`` does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "M3Searcher": "m3ingest.retrievers.searcher",
    "SearchResult": "m3ingest.retrievers.searcher",
    "M3Retriever": "m3ingest.retrievers.langchain",
    "M3Embeddings": "m3ingest.retrievers.embeddings",
    "M3MilvusSparseEmbedding": "m3ingest.retrievers.milvus_sparse",
    "M3QdrantSparseEmbeddings": "m3ingest.retrievers.qdrant_sparse",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'm3ingest.retrievers' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
