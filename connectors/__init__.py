"""Vector databases behind one small interface: Milvus (Lite file or server) and Qdrant (local or server)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from .base import (
    CHUNK_FIELDS,
    ChunkRecord,
    Filter,
    Fusion,
    SchemaMismatchError,
    SearchHit,
    SearchMode,
    StoreError,
    VectorStore,
)
from .filters import FilterError
from .retry import RetryPolicy

if TYPE_CHECKING:
    from m3ingest.config import StoreConfig

__all__ = [
    "CHUNK_FIELDS",
    "ChunkRecord",
    "Filter",
    "FilterError",
    "Fusion",
    "RetryPolicy",
    "SchemaMismatchError",
    "SearchHit",
    "SearchMode",
    "StoreError",
    "VectorStore",
    "is_embedded",
    "open_store",
    "store_from_config",
]


def open_store(
    backend: Literal["milvus", "qdrant"],
    uri: str,
    *,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
    retry_policy: RetryPolicy = RetryPolicy(),
) -> VectorStore:
    """Connect to a store.

    Milvus: ``uri`` is a Milvus Lite file (``./m3ingest.db``) or a server (``http://host:19530``),
    with ``token`` or ``user``/``password``. Qdrant: ``uri`` is ``:memory:``, a local folder or a
    server (``http://host:6333``), with ``api_key``.
    """
    if backend == "milvus":
        from .milvus import MilvusStore

        return MilvusStore(
            uri, token=token, user=user, password=password, timeout=timeout, retry_policy=retry_policy
        )
    if backend == "qdrant":
        from .qdrant import QdrantStore

        return QdrantStore(uri, api_key=api_key or token, timeout=timeout, retry_policy=retry_policy)
    raise ValueError(f"unknown store backend {backend!r}; set store.backend to 'milvus' or 'qdrant'")


def is_embedded(uri: str) -> bool:
    """Whether ``uri`` names an in-process engine (a Milvus Lite file, a Qdrant local folder or
    ``:memory:``), which only one process may open, rather than a server."""
    return "://" not in uri


def store_from_config(cfg: "StoreConfig") -> VectorStore:
    """The store a ``[store]`` configuration section describes (secrets read from it, never logged)."""
    from m3ingest.config import secret

    return open_store(
        cfg.backend,
        cfg.uri,
        token=secret(cfg.token),
        user=cfg.user,
        password=secret(cfg.password),
        api_key=secret(cfg.api_key),
        timeout=cfg.timeout,
    )
