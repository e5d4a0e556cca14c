"""Versions of a collection behind its alias: names, listing, switching, pruning and dropping.

``rebuild`` builds ``<name>__v<N>`` and points the alias ``<name>`` at it; every version has its
own records (see ``CollectionContext.version``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from m3ingest.connectors import VectorStore
    from m3ingest.context import CollectionContext

log = logging.getLogger(__name__)


def version_name(alias: str, n: int) -> str:
    return f"{alias}__v{n}"


def versions(store: VectorStore, alias: str) -> dict[int, str]:
    """The versioned collections of ``alias``: version number -> collection name."""
    pattern = re.compile(rf"^{re.escape(alias)}__v(\d+)$")
    found = {}
    for name in store.list_collections():
        m = pattern.match(name)
        if m:
            found[int(m.group(1))] = name
    return found


def switch_alias(store: VectorStore, alias: str, collection: str) -> bool:
    """Point ``alias`` at ``collection``; returns True when a plain collection had to be replaced."""
    if store.resolve_alias(alias) is None and store.has_collection(alias):
        log.warning(
            "migrating: %r is a plain collection; replacing it by an alias to %r "
            "(queries on %r fail for the moment between the two steps)",
            alias,
            collection,
            alias,
        )
        store.drop_collection(alias)
        store.set_alias(alias, collection)
        return True
    store.set_alias(alias, collection)
    return False


def prune(
    store: VectorStore, alias: str, keep: int, on_drop: Callable[[str], None] | None = None
) -> list[str]:
    """Drop versions of ``alias`` so that the live one and the ``keep - 1`` newest others remain."""
    live = store.resolve_alias(alias)
    others = [name for _, name in sorted(versions(store, alias).items(), reverse=True) if name != live]
    doomed = others[max(keep - 1, 0) :]
    for name in doomed:
        log.info("dropping old version %r of %r", name, alias)
        drop(store, name, on_drop)
    return doomed


def drop(store: VectorStore, name: str, on_drop: Callable[[str], None] | None) -> None:
    """Drop the collection ``name``, then what belongs to it (``on_drop(name)``: its records)."""
    store.drop_collection(name)
    if on_drop is not None:
        on_drop(name)


def remove_records(collection: CollectionContext, name: str) -> None:
    """Delete the record files of ``name``, a collection of ``collection``'s store (the lock of
    the collection the context names stays: its holder is running)."""
    path = collection.records_path_of(name)
    if path is None:
        return
    suffixes = ["", "-wal", "-shm"] + ([".lock"] if name != collection.name else [])
    for suffix in suffixes:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def drop_versions(store: VectorStore, collection: CollectionContext) -> list[str]:
    """Drop every version of the alias ``collection`` names, and their records."""
    names = sorted(versions(store, collection.name).values())
    for name in names:
        drop(store, name, lambda n: remove_records(collection, n))
    return names
