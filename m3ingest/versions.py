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
import re
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3ingest.connectors import StoreError, VectorStore
from m3ingest.redact import scrubbed

if TYPE_CHECKING:
    from m3ingest.config import Config
    from m3ingest.encoder import M3Encoder
    from m3ingest.pipeline import Summary

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
        _drop(store, name, on_drop)
    return doomed


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
                _drop(store, name, on_drop)
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


def version_config(cfg: Config, name: str) -> Config:
    """``cfg`` with ``store.collection`` set to the version ``name``."""
    return cfg.model_copy(update={"store": cfg.store.model_copy(update={"collection": name})})


def remove_records(cfg: Config, name: str) -> None:
    """Delete the record files of ``name``, a version of the alias ``cfg`` names (the alias's
    own lock file stays: the caller holds it)."""
    from m3ingest.records import default_path

    path = default_path(version_config(cfg, name))
    if str(path) != ":memory:":
        _remove_records(Path(path), with_lock=name != cfg.store.collection)


def drop_versions(store: VectorStore, cfg: Config) -> list[str]:
    """Drop every version of the alias ``cfg.store.collection`` names, and their records."""
    names = sorted(versions(store, cfg.store.collection).values())
    for name in names:
        _drop(store, name, lambda n: remove_records(cfg, n))
    return names


def _drop(store: VectorStore, name: str, on_drop: Callable[[str], None] | None) -> None:
    store.drop_collection(name)
    if on_drop is not None:
        on_drop(name)


def _abandon(
    connect: Callable[[], AbstractContextManager[VectorStore]],
    alias: str,
    target: str,
    shown: str | None,
    on_drop: Callable[[str], None] | None,
) -> None:
    try:
        with connect() as store:
            if store.resolve_alias(alias) == target:
                return  # the switch happened; only the clean-up of old versions failed
            log.error("rebuild of %r failed; dropping %r, the alias stays on %r", alias, target, shown)
            _drop(store, target, on_drop)
    except StoreError as e:
        log.error("could not drop %r (%s); the next rebuild drops it", target, e)


def _remove_records(path: Path, with_lock: bool) -> None:
    suffixes = ["", "-wal", "-shm"] + ([".lock"] if with_lock else [])
    for suffix in suffixes:
        path.with_name(path.name + suffix).unlink(missing_ok=True)


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
        raise RebuildError(
            f"no sampled chunk of {collection!r} was found by searching its own text"
        )


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
    from m3ingest import api
    from m3ingest.config import ConfigError
    from m3ingest.connectors import store_from_config
    from m3ingest.drift import find_drift
    from m3ingest.locking import collection_lock
    from m3ingest.records import Records, default_path
    from m3ingest.redact import register_config

    cfg = api.resolve_config(config, **overrides)
    register_config(cfg)
    if cfg.store.uri == ":memory:":
        raise ConfigError("rebuild needs a store that outlives one connection, not ':memory:'")
    alias = cfg.store.collection
    stop = stop or threading.Event()

    def build(target: str) -> Summary:
        nonlocal encoder
        on_drop(target)  # a new version starts from empty records, whatever an old run left
        if encoder is None:
            from m3ingest.encoder import M3Encoder

            m = cfg.model
            encoder = M3Encoder(m.name, device=m.device, dtype=m.dtype, batch_tokens=m.batch_tokens)
        return api.sync(paths, version_config(cfg, target), stop=stop, encoder=encoder, progress=progress)

    def check(store: VectorStore, target: str, summary: Summary) -> int:
        if summary.stopped:
            raise RebuildError(f"the rebuild of {alias!r} was stopped before the end")
        if summary.files_failed and not allow_failures:
            raise RebuildError(
                f"{summary.files_failed} file(s) failed (see the report); switching would lose "
                "their chunks. Fix them, or pass --allow-failures to switch anyway"
            )
        with Records(default_path(version_config(cfg, target))) as records:
            recorded = records.chunk_ids()
            pending = records.intents()
        drift = find_drift(store, target, recorded)
        if pending or not drift.clean:
            raise RebuildError(f"{target!r} does not hold what its records say: {drift.summary()}")
        count = store.count(target)
        if count == 0:
            raise RebuildError(f"{target!r} is empty: no file under {paths} gave a chunk")
        assert encoder is not None
        sample = [sorted(ids)[0] for _, ids in sorted(recorded.items()) if ids][:3]
        _sample_search(store, encoder, target, sample)
        return count

    def on_drop(name: str) -> None:
        remove_records(cfg, name)

    with collection_lock(cfg, wait=wait, timeout=wait_timeout, stop=stop):
        return rebuild_with(
            lambda: store_from_config(cfg.store), alias, build, check, keep=keep, on_drop=on_drop
        )
