"""verify: drift between records and the real store is found, reported and repaired."""

from __future__ import annotations

import uuid

import numpy as np

from m3ingest.connectors import ChunkRecord
from m3ingest.verify import compare, delete_orphans, find_drift

DIM = 8


def chunk(source: str, i: int) -> ChunkRecord:
    v = np.random.default_rng(i).normal(size=DIM).astype(np.float32)
    return ChunkRecord(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}#{i}")),
        text=f"{source} part {i}",
        source=source,
        chunk_index=i,
        start=0,
        end=10,
        content_hash=f"{i:064x}",
        dense=v / np.linalg.norm(v),
        sparse={i + 1: 1.0},
    )


def test_compare_names_every_kind_of_drift() -> None:
    recorded = {"a.md": {"1", "2"}, "b.md": {"3"}, "c.md": {"4"}}
    stored = {"a.md": {"1", "9"}, "c.md": {"4"}, "ghost.md": {"7", "8"}}
    drift = compare("docs", recorded, stored)
    assert not drift.clean
    assert drift.missing == {"a.md": {"2"}, "b.md": {"3"}}
    assert drift.orphans == {"a.md": {"9"}, "ghost.md": {"7", "8"}}
    summary = drift.summary()
    assert summary["missing_chunks"] == 2 and summary["orphan_chunks"] == 3
    assert summary["sources_without_chunks"] == ["b.md"]
    assert summary["sources_without_record"] == ["ghost.md"]
    assert compare("docs", recorded, recorded).clean


def test_drift_in_a_real_store_is_found_and_orphans_deleted(store, collection) -> None:
    store.ensure_collection(collection, DIM)
    a = [chunk("a.md", i) for i in range(3)]
    ghost = [chunk("ghost.md", i) for i in range(2)]
    store.upsert(collection, a[:2] + ghost)  # a.md's third chunk was lost; ghost.md was never recorded
    recorded = {"a.md": {c.id for c in a}}

    drift = find_drift(store, collection, recorded)
    assert drift.missing == {"a.md": {a[2].id}}
    assert drift.orphans == {"ghost.md": {c.id for c in ghost}}
    assert drift.sources_without_record == ["ghost.md"]

    assert delete_orphans(store, drift) == 2
    after = find_drift(store, collection, recorded)
    assert after.orphans == {} and after.missing == {"a.md": {a[2].id}}
    store.upsert(collection, [a[2]])
    assert find_drift(store, collection, recorded).clean
