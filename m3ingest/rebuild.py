"""Zero-downtime full rebuilds: build ``<name>__v<N>`` beside the live one, check it, move the alias.

Retrievers and ``sync`` use the name from ``store.collection``; after the first rebuild that name
is an alias pointing at a versioned collection. A rebuild:

1. takes the collection lock (no sync or other rebuild runs meanwhile; queries go on, served by
   the version the alias points at);
2. drops versions left by rebuilds that never finished;
3. ingests the folders into a new ``<name>__v<N>`` with its own records;
4. checks it: no file failed (unless allowed), the store holds exactly the recorded chunks, and a
   sample of chunks finds itself by search;
5. points the alias at it in one atomic step;
6. drops old versions so that ``keep`` versions remain (the live one included).

A failure at any step before 5 drops the new version and leaves the alias where it was.

Migration: when ``<name>`` is still a plain collection (built before the first rebuild), step 5
drops it and creates the alias in its place; both databases refuse an alias with the name of a
collection, so this one switch is two operations, milliseconds apart, during which queries on
``<name>`` fail. Every later switch is atomic.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from m3ingest.connectors import StoreError, VectorStore

log = logging.getLogger(__name__)


class RebuildError(RuntimeError):
    """The new version failed its checks; the alias was not moved."""


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


@dataclass
class RebuildResult:
    """What a rebuild did."""

    alias: str
    collection: str
    previous: str | None
    chunks: int
    migrated: bool = False
    dropped: list[str] = field(default_factory=list)
    build: Any = None

    def summary(self) -> dict[str, Any]:
        out = {
            "alias": self.alias,
            "collection": self.collection,
            "previous": self.previous,
            "chunks": self.chunks,
            "migrated_plain_collection": self.migrated,
            "dropped": self.dropped,
        }
        if hasattr(self.build, "to_dict"):
            out["build"] = self.build.to_dict()
        return out


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


def prune(store: VectorStore, alias: str, keep: int, on_drop: Callable[[str], None] | None = None) -> list[str]:
    """Drop versions of ``alias`` so that the live one and the ``keep - 1`` newest others remain."""
    live = store.resolve_alias(alias)
    others = [name for _, name in sorted(versions(store, alias).items(), reverse=True) if name != live]
    doomed = others[max(keep - 1, 0) :]
    for name in doomed:
        log.info("dropping old version %r of %r", name, alias)
        store.drop_collection(name)
        if on_drop is not None:
            on_drop(name)
    return doomed


def rebuild_with(
    store: VectorStore,
    alias: str,
    build: Callable[[str], Any],
    check: Callable[[str, Any], int],
    *,
    keep: int = 1,
    on_drop: Callable[[str], None] | None = None,
) -> RebuildResult:
    """The rebuild procedure with the ingest and the checks passed in.

    ``build(collection)`` fills the new collection and returns its run summary; ``check(collection,
    summary)`` raises :class:`RebuildError` when the new version must not go live, else returns
    its chunk count; ``on_drop(collection)`` removes what belongs to a dropped version (records).
    """
    if keep < 1:
        raise ValueError("keep must be at least 1 (the live version)")
    previous = store.resolve_alias(alias)
    existing = versions(store, alias)
    live_n = next((n for n, name in existing.items() if name == previous), 0)
    for n, name in sorted(existing.items()):
        if n > live_n:
            log.warning("dropping %r, left by a rebuild that did not finish", name)
            store.drop_collection(name)
            if on_drop is not None:
                on_drop(name)
    target = version_name(alias, max(existing, default=0) + 1)
    shown = previous or (alias if store.has_collection(alias) else None)
    log.info("rebuilding %r into %r; queries are served by %r meanwhile", alias, target, shown)
    try:
        summary = build(target)
        chunks = check(target, summary)
    except BaseException:
        log.error("rebuild of %r failed; dropping %r, the alias stays on %r", alias, target, shown)
        try:
            store.drop_collection(target)
            if on_drop is not None:
                on_drop(target)
        except StoreError as cleanup:
            log.error("could not drop %r (%s); the next rebuild drops it", target, cleanup)
        raise
    migrated = switch_alias(store, alias, target)
    if migrated and on_drop is not None:
        on_drop(alias)
    log.info("alias %r now points at %r (%d chunks)", alias, target, chunks)
    dropped = prune(store, alias, keep, on_drop)
    return RebuildResult(alias, target, shown, chunks, migrated, dropped, summary)
