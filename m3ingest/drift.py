"""Drift: how what the records say differs from what the store really holds."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m3ingest.connectors import VectorStore

log = logging.getLogger(__name__)


@dataclass
class Drift:
    """Differences found by ``verify``; empty when the store holds exactly what the records say."""

    collection: str
    #: Recorded chunk ids the store does not hold, by recorded source.
    missing: dict[str, set[str]] = field(default_factory=dict)
    #: Stored chunk ids no record knows, by the source they carry in the store.
    orphans: dict[str, set[str]] = field(default_factory=dict)
    records: int = 0
    stored: int = 0

    @property
    def clean(self) -> bool:
        return not self.missing and not self.orphans

    @property
    def sources_without_chunks(self) -> list[str]:
        """Recorded sources of which the store holds nothing at all."""
        return sorted(s for s, ids in self.missing.items() if ids == self._recorded.get(s))

    @property
    def sources_without_record(self) -> list[str]:
        """Sources present in the store that the records do not know."""
        return sorted(s for s in self.orphans if s not in self._recorded)

    _recorded: Mapping[str, Set[str]] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (counts, and the sources concerned)."""
        return {
            "collection": self.collection,
            "clean": self.clean,
            "chunks_recorded": self.records,
            "chunks_stored": self.stored,
            "missing_chunks": sum(len(v) for v in self.missing.values()),
            "orphan_chunks": sum(len(v) for v in self.orphans.values()),
            "sources_with_missing_chunks": sorted(self.missing),
            "sources_with_orphans": sorted(self.orphans),
            "sources_without_chunks": self.sources_without_chunks,
            "sources_without_record": self.sources_without_record,
        }


def compare(
    collection: str, recorded: Mapping[str, Set[str]], stored: Mapping[str, Set[str]]
) -> Drift:
    """The drift between recorded and stored chunk ids, each given as source -> ids."""
    stored_ids = {i for ids in stored.values() for i in ids}
    recorded_ids = {i for ids in recorded.values() for i in ids}
    missing = {s: set(ids) - stored_ids for s, ids in recorded.items()}
    orphans = {s: set(ids) - recorded_ids for s, ids in stored.items()}
    return Drift(
        collection=collection,
        missing={s: ids for s, ids in missing.items() if ids},
        orphans={s: ids for s, ids in orphans.items() if ids},
        records=len(recorded_ids),
        stored=len(stored_ids),
        _recorded={s: set(ids) for s, ids in recorded.items()},
    )


def find_drift(store: VectorStore, collection: str, recorded: Mapping[str, Set[str]]) -> Drift:
    """The drift between ``recorded`` (source -> chunk ids) and the ids the store holds."""
    stored = store.ids_by_source(collection) if store.has_collection(collection) else {}
    return compare(collection, recorded, stored)


def delete_orphans(store: VectorStore, drift: Drift) -> int:
    """Delete the chunks no record knows; returns how many."""
    ids = [i for ids in drift.orphans.values() for i in sorted(ids)]
    if ids:
        log.info("deleting %d orphan chunk(s) from %r", len(ids), drift.collection)
        store.delete(drift.collection, ids)
    return len(ids)
