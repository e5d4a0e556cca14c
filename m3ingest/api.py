"""The library functions behind the read and drop commands: ``search``, ``stats``, ``drop``.

Each takes ``config`` (a ``Config``, a TOML file path, or None for defaults plus environment)
and keyword overrides, flat (``uri="x.db"``, ``collection="docs"``, see ``config.OPTIONS``) or by
section (``store={"uri": ...}``); overrides win over the file and the environment. ``search``
and ``stats`` only read: they create no file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from m3ingest.config import Config, resolve_config
from m3ingest.context import CollectionContext
from m3ingest.redact import scrubbed

if TYPE_CHECKING:
    from m3ingest.connectors import VectorStore
    from m3ingest.encoder import M3Encoder
    from m3ingest.retrievers.searcher import SearchResult

__all__ = ["drop", "search", "stats"]


@scrubbed
def search(
    query: str,
    config: Config | str | os.PathLike[str] | None = None,
    *,
    k: int | None = None,
    mode: str | None = None,
    filter: Mapping[str, Any] | None = None,
    encoder: M3Encoder | None = None,
    **overrides: Any,
) -> list[SearchResult]:
    """The ``k`` chunks that best match ``query`` (``mode``: dense, sparse, hybrid or m3)."""
    from m3ingest.retrievers import M3Searcher

    cfg = resolve_config(config, **overrides)
    with _open_collection_store(cfg) as store:
        searcher = M3Searcher.from_config(cfg, encoder=encoder, store=store)
        return searcher.search(query, k=k, mode=mode, filter=filter)


def _open_collection_store(config: Config) -> VectorStore:
    """The store of ``config``'s collection, opened to read it; a missing store or collection is
    a ``CollectionNotFoundError`` (nothing is created)."""
    from m3ingest.errors import CollectionNotFoundError

    collection = CollectionContext.from_config(config)
    missing = CollectionNotFoundError(
        f"there is no collection {collection.name!r} in {config.store.backend} at "
        f"{collection.location.display}; ingest documents first (m3ingest ingest PATH) or set "
        "store.uri and store.collection (--uri, --collection) to an existing one"
    )
    if not collection.location.exists():
        raise missing
    store = collection.open_store(create=False)
    try:
        if not store.has_collection(collection.name):
            raise missing
    except BaseException:
        store.close()
        raise
    return store


@scrubbed
def stats(config: Config | str | os.PathLike[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """What the records and the store hold for the configured collection (nothing is created)."""
    collection = CollectionContext.from_config(resolve_config(config, **overrides))
    out: dict[str, Any] = {
        "backend": collection.config.store.backend,
        "collection": collection.name,
        "exists": False,
        "chunks_in_store": 0,
    }
    if collection.location.exists():
        with collection.open_store(create=False) as store:
            collection = collection.resolved(store)
            out["exists"] = store.has_collection(collection.target)
            out["chunks_in_store"] = store.count(collection.target) if out["exists"] else 0
    sources = chunks = pending = 0
    built_with: dict[str, str] = {}
    if collection.records_exist():
        with collection.open_records(read_only=True) as records:
            sources, chunks = records.counts()
            pending, built_with = len(records.intents()), records.meta()
    out.update(
        {
            "sources_recorded": sources,
            "chunks_recorded": chunks,
            "pending_intents": pending,
            "records": str(collection.records_path or ":memory:"),
            "built_with": built_with,
        }
    )
    return out


@scrubbed
def drop(config: Config | str | os.PathLike[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """Delete the configured collection and its records; when it names an alias that ``rebuild``
    made, the alias and every version behind it, with their records. Waits for no run: a run
    holding the collection's lock raises ``CollectionLocked``."""
    from m3ingest.aliases import drop_versions, remove_records

    collection = CollectionContext.from_config(resolve_config(config, **overrides))
    name = collection.name
    if not collection.has_local_state() and collection.location.kind != "server":
        return {"collection": name, "dropped": False, "versions": []}
    existed, versions = False, []
    with collection.lock():
        if collection.location.exists():
            with collection.open_store(create=False) as store:
                existed = store.has_collection(name)
                store.drop_collection(name)
                versions = drop_versions(store, collection)
        remove_records(collection, name)
    return {"collection": name, "dropped": existed or bool(versions), "versions": versions}
