"""Zero-downtime rebuilds on both engines: versions, the atomic alias switch, failures, migration."""

from __future__ import annotations

import uuid
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from m3ingest.connectors import ChunkRecord
from m3ingest.versions import RebuildError, rebuild_with, versions

DIM = 8


def chunk(source: str, text: str) -> ChunkRecord:
    rng = np.random.default_rng(abs(hash(text)) % 2**32)
    v = rng.normal(size=DIM).astype(np.float32)
    return ChunkRecord(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, source + text)),
        text=text,
        source=source,
        chunk_index=0,
        start=0,
        end=len(text),
        content_hash=text,
        dense=v / np.linalg.norm(v),
        sparse={1: 0.5},
    )


def builder(store, texts: list[str]):
    def build(collection: str) -> int:
        store.ensure_collection(collection, DIM)
        store.upsert(collection, [chunk(f"{t}.md", t) for t in texts])
        return len(texts)

    return build


def check(store):
    def verify(_store, collection: str, built: int) -> int:
        n = store.count(collection)
        if n != built:
            raise RebuildError(f"{collection} holds {n} chunks, expected {built}")
        return n

    return verify


def opened(store):
    """The ``connect`` of a rebuild, over the test's store (left open)."""
    return lambda: nullcontext(store)


def texts_behind(store, name: str) -> set[str]:
    return {r.text for hit in store.ids_by_source(name).values() for r in store.get(name, list(hit))}


@pytest.fixture
def alias(store):
    name = f"r_{uuid.uuid4().hex[:10]}"
    yield name
    store.drop_alias(name)
    for collection in [name, *versions(store, name).values()]:
        store.drop_collection(collection)


def test_rebuild_switches_the_alias_and_keeps_the_last_versions(store, alias) -> None:
    dropped_records = []
    first = rebuild_with(
        opened(store), alias, builder(store, ["a", "b"]), check(store), on_drop=dropped_records.append
    )
    assert (first.collection, first.previous, first.chunks) == (f"{alias}__v1", None, 2)
    assert store.resolve_alias(alias) == f"{alias}__v1"
    assert texts_behind(store, alias) == {"a", "b"}

    second = rebuild_with(opened(store), alias, builder(store, ["a", "c", "d"]), check(store), keep=2)
    assert second.previous == f"{alias}__v1" and second.dropped == []
    assert store.resolve_alias(alias) == f"{alias}__v2"
    assert texts_behind(store, alias) == {"a", "c", "d"}

    third = rebuild_with(
        opened(store), alias, builder(store, ["e"]), check(store), keep=1, on_drop=dropped_records.append
    )
    assert third.dropped == [f"{alias}__v2", f"{alias}__v1"]
    assert sorted(versions(store, alias).values()) == [f"{alias}__v3"]
    assert dropped_records == [f"{alias}__v2", f"{alias}__v1"]
    assert texts_behind(store, alias) == {"e"}


def test_queries_use_the_old_version_during_the_build_and_a_failed_check_keeps_it(store, alias) -> None:
    rebuild_with(opened(store), alias, builder(store, ["old"]), check(store))
    seen_during_build = []

    def failing_build(collection: str) -> int:
        builder(store, ["new1", "new2"])(collection)
        seen_during_build.append(texts_behind(store, alias))
        return 3  # the check expects more chunks than were written: the new version is refused

    with pytest.raises(RebuildError):
        rebuild_with(opened(store), alias, failing_build, check(store))
    assert seen_during_build == [{"old"}]
    assert store.resolve_alias(alias) == f"{alias}__v1"
    assert list(versions(store, alias).values()) == [f"{alias}__v1"], "the failed version is dropped"
    assert texts_behind(store, alias) == {"old"}


def test_a_build_that_crashes_leaves_the_alias_and_its_leftover_is_cleaned(store, alias) -> None:
    rebuild_with(opened(store), alias, builder(store, ["old"]), check(store))
    # As if a rebuild had been killed after creating its collection: a version nobody points at.
    builder(store, ["half"])(f"{alias}__v2")
    result = rebuild_with(opened(store), alias, builder(store, ["next"]), check(store))
    assert result.collection == f"{alias}__v3"
    assert sorted(versions(store, alias).values()) == [f"{alias}__v3"]
    assert texts_behind(store, alias) == {"next"}


def test_first_rebuild_migrates_a_plain_collection_of_the_alias_name(store, alias) -> None:
    builder(store, ["plain"])(alias)
    dropped_records = []
    result = rebuild_with(
        opened(store), alias, builder(store, ["v1"]), check(store), on_drop=dropped_records.append
    )
    assert result.migrated and result.previous == alias
    assert store.resolve_alias(alias) == f"{alias}__v1"
    assert alias not in store.list_collections()
    assert dropped_records == [alias]
    assert texts_behind(store, alias) == {"v1"}


# --- end to end: real ingestion, migration of a plain collection, sync through the alias ---------


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_rebuild_end_to_end_with_migration_alias_sync_and_settings_change(tmp_path, backend) -> None:
    import m3ingest
    from m3ingest.connectors import store_from_config
    from m3ingest.errors import SettingsMismatchError

    from ingest_helpers import make_config, paragraphs

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"doc{i}.md").write_text(paragraphs(i, 5))
    config = make_config(tmp_path, backend)
    m3ingest.sync([docs], config)  # a plain collection "docs", built before any rebuild

    first = m3ingest.rebuild([docs], config)
    assert first.migrated and first.collection == "docs__v1"
    hits = m3ingest.search("vector store chunk", config, k=3)
    assert hits and all(h.metadata["source"].startswith("doc") for h in hits)

    # sync goes through the alias, against the records of the version it points at.
    (docs / "doc1.md").write_text(paragraphs(7, 5))
    (docs / "doc2.md").unlink()
    summary = m3ingest.sync([docs], config)
    assert (summary.files_unchanged, summary.files_changed, summary.files_deleted) == (1, 1, 1)
    assert m3ingest.verify(config).clean

    # Other chunking: sync refuses and names rebuild; rebuild switches, keeping one old version.
    rechunked = make_config(tmp_path, backend, chunk_size=32, overlap=4)
    with pytest.raises(SettingsMismatchError, match="m3ingest rebuild"):
        m3ingest.sync([docs], rechunked)
    second = m3ingest.rebuild([docs], rechunked, keep=2)
    assert second.previous == "docs__v1" and second.collection == "docs__v2" and second.dropped == []
    assert m3ingest.sync([docs], rechunked).files_unchanged == 2
    assert m3ingest.verify(rechunked).clean

    # A rebuild whose files fail is refused: the alias stays, the half-built version is dropped.
    (docs / "broken.txt").write_bytes(b"\x00\x01\x02 binary \xff\xfe" * 50)
    with pytest.raises(RebuildError, match="failed"):
        m3ingest.rebuild([docs], rechunked)
    with store_from_config(rechunked.store) as store:
        assert store.resolve_alias("docs") == "docs__v2"
        assert sorted(versions(store, "docs").values()) == ["docs__v1", "docs__v2"]
    third = m3ingest.rebuild([docs], rechunked, allow_failures=True)
    assert third.collection == "docs__v3" and sorted(third.dropped) == ["docs__v1", "docs__v2"]
    records = tmp_path / f"{Path(config.store.uri).name}.records"
    assert sorted(p.name for p in records.glob("*.sqlite")) == ["docs__v3.sqlite"]

    # drop on the alias removes it, every version and their records.
    dropped = m3ingest.drop(rechunked)
    assert dropped["dropped"] and dropped["versions"] == ["docs__v3"]
    with store_from_config(rechunked.store) as store:
        assert store.resolve_alias("docs") is None and versions(store, "docs") == {}
        assert not store.has_collection("docs")
    assert [p.name for p in records.glob("docs__v*")] == []
