"""Vector databases behind one small interface: Milvus (Lite file or server) and Qdrant (local or server).

Importing this package is cheap: the database clients (and numpy) are imported when a store is
opened or a filter rendered, so a command's ``--help`` does not wait for them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal

from .location import StoreLocation, parse_location
from .retry import RetryPolicy

if TYPE_CHECKING:
    from m3ingest.config import StoreConfig

    from .base import (
        CHUNK_FIELDS,
        ChunkRecord,
        Filter,
        Fusion,
        SchemaMismatchError,
        SearchHit,
        SearchMode,
        StoreError,
        StoreNotFoundError,
        VectorStore,
    )
    from .filters import FilterError
    from .logs import quiet_client_logs

#: Public names defined in submodules, imported on first use.
_LAZY = {
    "CHUNK_FIELDS": "base",
    "ChunkRecord": "base",
    "Filter": "base",
    "Fusion": "base",
    "SchemaMismatchError": "base",
    "SearchHit": "base",
    "SearchMode": "base",
    "StoreError": "base",
    "StoreNotFoundError": "base",
    "VectorStore": "base",
    "FilterError": "filters",
    "quiet_client_logs": "logs",
}

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
    "StoreLocation",
    "StoreNotFoundError",
    "VectorStore",
    "is_embedded",
    "open_store",
    "parse_location",
    "quiet_client_logs",
    "store_from_config",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
    create: bool = True,
) -> VectorStore:
    """Connect to a store.

    Milvus: ``uri`` is a Milvus Lite file (``./m3ingest.db``) or a server (``http://host:19530``),
    with ``token`` or ``user``/``password``. Qdrant: ``uri`` is ``:memory:``, a local folder or a
    server (``http://host:6333``), with ``api_key``. ``create=False`` (for commands that only
    read) raises ``StoreNotFoundError`` for an embedded store that does not exist, and creates
    nothing on disk.
    """
    if backend == "milvus":
        from .milvus import MilvusStore

        return MilvusStore(
            uri, token=token, user=user, password=password, timeout=timeout, retry_policy=retry_policy,
            create=create,
        )
    if backend == "qdrant":
        from .qdrant import QdrantStore

        return QdrantStore(uri, api_key=api_key or token, timeout=timeout, retry_policy=retry_policy, create=create)
    raise ValueError(f"unknown store backend {backend!r}; set store.backend to 'milvus' or 'qdrant'")


def is_embedded(uri: str) -> bool:
    """Whether ``uri`` names an in-process engine (a Milvus Lite file, a Qdrant local folder or
    ``:memory:``), which only one process may open, rather than a server."""
    return parse_location(uri).kind != "server"


def store_from_config(cfg: StoreConfig, *, create: bool = True) -> VectorStore:
    """The store a ``[store]`` configuration section describes (secrets read from it, never logged);
    ``create`` as in ``open_store``."""
    from m3ingest.config import secret

    return open_store(
        cfg.backend,
        cfg.uri,
        token=secret(cfg.token),
        user=cfg.user,
        password=secret(cfg.password),
        api_key=secret(cfg.api_key),
        timeout=cfg.timeout,
        create=create,
    )
