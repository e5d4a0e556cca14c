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
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from m3ingest.aliases import drop, drop_versions, prune, remove_records, switch_alias, version_name, versions
from m3ingest.errors import ExitCode, M3IngestError
from m3ingest.redact import scrubbed

if TYPE_CHECKING:
    from m3ingest.config import Config
    from m3ingest.connectors import VectorStore
    from m3ingest.encoder import M3Encoder
    from m3ingest.ingest.summary import Summary

__all__ = ["RebuildError", "RebuildResult", "drop_versions", "rebuild", "rebuild_with", "versions"]

log = logging.getLogger(__name__)


class RebuildError(M3IngestError):
    """The new version failed its checks; the alias was not moved."""

    exit_code = ExitCode.FILES_FAILED


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


def rebuild_with(
    connect: Callable[[], AbstractContextManager[VectorStore]],
    alias: str,
    build: Callable[[str], Any],
    check: Callable[[VectorStore, str, Any], int],
    *,
    keep: int = 1,
    on_drop: Callable[[str], None] | None = None,
) -> RebuildResult:
    """The rebuild procedure with the ingest and the checks passed in.

    ``connect()`` opens the store (it is closed while ``build`` runs, which opens its own: a
    Qdrant local folder admits one client at a time). ``build(collection)`` fills the new
    collection and returns its run summary; ``check(store, collection, summary)`` raises
    :class:`RebuildError` when the new version must not go live, else returns its chunk count;
    ``on_drop(collection)`` removes what belongs to a dropped collection (its records).
    """
    if keep < 1:
        raise ValueError("keep must be at least 1 (the live version)")
    with connect() as store:
        previous = store.resolve_alias(alias)
        existing = versions(store, alias)
        live_n = next((n for n, name in existing.items() if name == previous), 0)
        for n, name in sorted(existing.items()):
            if n > live_n:
                log.warning("dropping %r, left by a rebuild that did not finish", name)
                drop(store, name, on_drop)
        target = version_name(alias, max(existing, default=0) + 1)
        shown = previous or (alias if store.has_collection(alias) else None)
    log.info("rebuilding %r into %r; queries are served by %r meanwhile", alias, target, shown)
    try:
        summary = build(target)
        with connect() as store:
            chunks = check(store, target, summary)
            migrated = switch_alias(store, alias, target)
            if migrated and on_drop is not None:
                on_drop(alias)
            log.info("alias %r now points at %r (%d chunks)", alias, target, chunks)
            dropped = prune(store, alias, keep, on_drop)
    except BaseException:
        _abandon(connect, alias, target, shown, on_drop)
        raise
    return RebuildResult(alias, target, shown, chunks, migrated, dropped, summary)


def _abandon(
    connect: Callable[[], AbstractContextManager[VectorStore]],
    alias: str,
    target: str,
    shown: str | None,
    on_drop: Callable[[str], None] | None,
) -> None:
    from m3ingest.connectors import StoreError

    try:
        with connect() as store:
            if store.resolve_alias(alias) == target:
                return  # the switch happened; only the clean-up of old versions failed
            log.error("rebuild of %r failed; dropping %r, the alias stays on %r", alias, target, shown)
            drop(store, target, on_drop)
    except StoreError as e:
        log.error("could not drop %r (%s); the next rebuild drops it", target, e)


def _sample_search(store: VectorStore, encoder: M3Encoder, collection: str, ids: list[str]) -> None:
    from m3ingest.retrievers import M3Searcher

    samples = store.get(collection, ids)
    searcher = M3Searcher(store, encoder, collection, mode="hybrid", k=10)
    found = 0
    for chunk in samples:
        hits = searcher.search(chunk.text)
        if not hits:
            raise RebuildError(f"a search in {collection!r} found nothing")
        found += chunk.id in {h.id for h in hits}
    if samples and not found:
        raise RebuildError(f"no sampled chunk of {collection!r} was found by searching its own text")


@scrubbed
def rebuild(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    config: Config | str | os.PathLike[str] | None = None,
    *,
    keep: int = 1,
    allow_failures: bool = False,
    wait: bool = False,
    wait_timeout: float | None = None,
    progress: bool = False,
    stop: threading.Event | None = None,
    encoder: M3Encoder | None = None,
    **overrides: Any,
) -> RebuildResult:
    """Re-index ``paths`` into a new version of the collection and switch the alias to it.

    ``store.collection`` names the alias. ``keep``: versions that remain, the live one included.
    Files that fail make the rebuild refuse the switch unless ``allow_failures``. Raises
    :class:`RebuildError` (alias unchanged) when the new version fails its checks.
    """
    from m3ingest.config import resolve_config
    from m3ingest.context import CollectionContext
    from m3ingest.drift import find_drift
    from m3ingest.errors import ConfigError
    from m3ingest.ingest import roots_of, sync

    cfg = resolve_config(config, **overrides)
    collection = CollectionContext.from_config(cfg)
    if collection.location.kind == "memory":
        raise ConfigError("rebuild needs a store that outlives one connection, not ':memory:'")
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1 (the live version), got {keep}")
    roots = roots_of(paths)
    alias = collection.name
    stop = stop or threading.Event()

    def build(target: str) -> Summary:
        nonlocal encoder
        on_drop(target)  # a new version starts from empty records, whatever an old run left
        if encoder is None:
            from m3ingest.encoder import M3Encoder

            encoder = M3Encoder.from_config(cfg.model)
        version = cfg.model_copy(update={"store": cfg.store.model_copy(update={"collection": target})})
        return sync(roots, version, stop=stop, encoder=encoder, progress=progress)

    def check(store: VectorStore, target: str, summary: Summary) -> int:
        if summary.stopped:
            raise RebuildError(
                f"the rebuild of {alias!r} was stopped before the end", exit_code=ExitCode.INTERRUPTED
            )
        if summary.files_failed and not allow_failures:
            raise RebuildError(
                f"{summary.files_failed} file(s) failed (see the report); switching would lose "
                "their chunks. Fix them, or pass --allow-failures to switch anyway"
            )
        with collection.version(target).open_records() as records:
            recorded = records.chunk_ids()
            pending = records.intents()
        drift = find_drift(store, target, recorded)
        if pending or not drift.clean:
            raise RebuildError(
                f"{target!r} does not hold what its records say: {drift.summary()}",
                exit_code=ExitCode.STATE_BROKEN,
            )
        count = store.count(target)
        if count == 0:
            raise RebuildError(f"{target!r} is empty: no file under {paths} gave a chunk")
        assert encoder is not None
        sample = [sorted(ids)[0] for _, ids in sorted(recorded.items()) if ids][:3]
        _sample_search(store, encoder, target, sample)
        return count

    def on_drop(name: str) -> None:
        remove_records(collection, name)

    with collection.lock(wait=wait, timeout=wait_timeout, stop=stop):
        return rebuild_with(collection.open_store, alias, build, check, keep=keep, on_drop=on_drop)
