"""``m3ingest verify``: compare the records with what the store holds, and repair the drift."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from m3ingest.drift import Drift, compare, delete_orphans, find_drift
from m3ingest.redact import scrubbed

if TYPE_CHECKING:
    from m3ingest.config import Config
    from m3ingest.context import CollectionContext

log = logging.getLogger(__name__)


@dataclass
class VerifyResult:
    """What ``verify`` found, and what ``repair`` did about it."""

    drift: Drift
    #: Sources left half-written by a crashed run (their intents), at the time of the check.
    pending: list[str] = field(default_factory=list)
    repaired: bool = False
    orphans_deleted: int = 0
    #: Sources whose missing chunks were re-encoded (or, when ``deferred``, left for the next sync).
    reencoded: list[str] = field(default_factory=list)
    deferred: bool = False
    #: The drift left after the repair (None without repair).
    after: Drift | None = None

    @property
    def clean(self) -> bool:
        final = self.after if self.after is not None else self.drift
        return final.clean and (self.repaired or not self.pending)

    def lines(self) -> list[str]:
        """The human-readable report."""
        d = self.drift.summary()
        out = [
            f"collection {d['collection']}: {d['chunks_recorded']} chunks recorded, "
            f"{d['chunks_stored']} stored",
            f"missing chunks: {d['missing_chunks']} "
            f"(sources: {', '.join(d['sources_with_missing_chunks']) or '-'})",
            f"orphan chunks: {d['orphan_chunks']} (sources: {', '.join(d['sources_with_orphans']) or '-'})",
        ]
        if self.pending:
            out.append(f"left unfinished by a crashed run: {', '.join(self.pending)}")
        if self.repaired:
            verb = "to be re-encoded by the next sync" if self.deferred else "re-encoded"
            out.append(
                f"repaired: {self.orphans_deleted} orphan chunks deleted; "
                f"{verb}: {', '.join(self.reencoded) or '-'}"
            )
        out.append("clean" if self.clean else "DRIFT (run `m3ingest verify --repair FOLDER...`)")
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "clean": self.clean,
            "drift": self.drift.summary(),
            "unfinished_sources": self.pending,
        }
        if self.repaired:
            out["repair"] = {
                "orphans_deleted": self.orphans_deleted,
                "sources_reencoded": self.reencoded,
                "reencoding_deferred_to_next_sync": self.deferred,
                "after": self.after.summary() if self.after else None,
            }
        return out


@scrubbed
def verify(
    config: Config | str | os.PathLike[str] | None = None,
    *,
    repair: bool = False,
    paths: Sequence[str | os.PathLike[str]] = (),
    wait: bool = False,
    wait_timeout: float | None = None,
    **overrides: Any,
) -> VerifyResult:
    """Compare the records of the configured collection with the chunk ids its store holds.

    ``repair``: finish what crashed runs left, delete orphan chunks, and re-encode the sources
    with missing chunks from ``paths`` (the folders they were ingested from; without them the
    next ``sync`` re-encodes those sources). Repair takes the collection lock.
    """
    from m3ingest.config import resolve_config
    from m3ingest.context import CollectionContext
    from m3ingest.ingest import ingest, roots_of

    config = resolve_config(config, **overrides)
    roots = roots_of(paths) if paths else []
    context = CollectionContext.from_config(config)
    if not repair:
        return _check(context)
    with context.lock(wait=wait, timeout=wait_timeout), context.open_store() as store:
        live = context.resolved(store)
        with live.open_records() as records:
            pending = sorted(records.intents())
            drift = find_drift(store, live.target, records.chunk_ids())
            result = VerifyResult(drift, pending)
            log.info("verify %r: %s", live.target, drift.summary())
            if drift.clean and not pending:
                return result
            records.reconcile(store, live.target)
            current = find_drift(store, live.target, records.chunk_ids())
            result.orphans_deleted = delete_orphans(store, current)
            records.forget_chunks(current.missing)
            result.reencoded = sorted(set(current.missing) | set(pending))
            result.repaired = True
    if roots and result.reencoded:
        ingest(roots, config=config, wait=True, wait_timeout=wait_timeout)
    else:
        result.deferred = bool(result.reencoded)
    with context.open_store() as store:
        live = context.resolved(store)
        with live.open_records() as records:
            result.after = find_drift(store, live.target, records.chunk_ids())
    return result


def _check(context: CollectionContext) -> VerifyResult:
    """``verify`` without repair: reads only, and creates nothing."""
    recorded: dict[str, set[str]] = {}
    pending: list[str] = []
    stored: dict[str, set[str]] = {}
    live = context
    if context.location.exists():
        with context.open_store(create=False) as store:
            live = context.resolved(store)
            if store.has_collection(live.target):
                stored = store.ids_by_source(live.target)
    if live.records_exist():
        with live.open_records(read_only=True) as records:
            recorded, pending = records.chunk_ids(), sorted(records.intents())
    drift = compare(live.target, recorded, stored)
    log.info("verify %r: %s", live.target, drift.summary())
    return VerifyResult(drift, pending)
