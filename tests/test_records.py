"""The record store: settings, commits, intents and their reconciliation against a real store."""

from __future__ import annotations

import numpy as np
import pytest

from m3ingest.config import Config
from m3ingest.connectors import ChunkRecord
from m3ingest.context import CollectionContext
from m3ingest.errors import SettingsMismatchError
from m3ingest.ids import chunk_id, text_hash
from m3ingest.records import Records, SourceRecord, settings_of


def chunk(cid: str, source: str) -> ChunkRecord:
    return ChunkRecord(
        id=cid, text="t", source=source, chunk_index=0, start=0, end=1, content_hash="h",
        dense=np.ones(4, np.float32) / 2, sparse={1: 0.5},
    )


def test_chunk_ids_are_stable_uuid5():
    a = chunk_id("c", "a.md", text_hash("x"))
    assert a == chunk_id("c", "a.md", text_hash("x"))
    assert len({a, chunk_id("d", "a.md", text_hash("x")), chunk_id("c", "b.md", text_hash("x")),
                chunk_id("c", "a.md", text_hash("y")), chunk_id("c", "a.md", text_hash("x"), 1)}) == 5
    assert a[14] == "5"


def default_path(config):
    return CollectionContext.from_config(config).records_path


def test_default_locations(tmp_path):
    lite = Config.model_validate({"store": {"uri": str(tmp_path / "m.db"), "collection": "x"}})
    assert default_path(lite) == tmp_path / "m.db.records" / "x.sqlite"
    server = Config.model_validate({"store": {"uri": "http://h:19530", "collection": "x"}})
    assert str(default_path(server)) == ".m3ingest/x.sqlite"
    folder = Config.model_validate({"records": {"path": str(tmp_path / "r")}})
    assert default_path(folder) == tmp_path / "r" / "m3ingest.sqlite"
    file = Config.model_validate({"records": {"path": str(tmp_path / "r.sqlite")}})
    assert default_path(file) == tmp_path / "r.sqlite"


def test_settings_are_kept_and_checked(tmp_path):
    path = tmp_path / "r.sqlite"
    with Records(path) as records:
        records.record_settings(settings_of(Config(), None))
    with Records(path) as records:
        records.check_settings(settings_of(Config(), None), "c")
        other = Config.model_validate({"model": {"name": "other"}})
        with pytest.raises(SettingsMismatchError, match="model: built with BAAI/bge-m3, now other"):
            records.check_settings(settings_of(other, None), "c")


def test_commit_replaces_the_record_and_clears_the_intent(tmp_path):
    with Records(tmp_path / "r.sqlite") as records:
        records.begin("a", ["1", "2"], [])
        records.commit(SourceRecord("a", 10, 20, "h", {"1": "s1", "2": "s2"}))
        assert records.intents() == {}
        assert records.get("a") == SourceRecord("a", 10, 20, "h", {"1": "s1", "2": "s2"})
        records.touch("a", 11, 21)
        assert (records.get("a").size, records.get("a").mtime_ns) == (11, 21)
        assert records.counts() == (1, 2)
        records.remove("a")
        assert records.get("a") is None


def test_reconcile_removes_everything_in_doubt(store, collection):
    ids = [chunk_id(collection, "a", text_hash(str(i))) for i in range(4)]
    store.ensure_collection(collection, dim=4)
    store.upsert(collection, [chunk(i, "a") for i in ids[:3]])
    with Records(":memory:") as records:
        records.commit(SourceRecord("a", 1, 1, "old", {ids[0]: "s", ids[1]: "s", ids[2]: "s"}))
        # died after writing ids[3] and before deleting ids[2] and committing
        records.begin("a", [ids[3]], [ids[2]])
        store.upsert(collection, [chunk(ids[3], "a")])
        # died while adding a brand-new source
        new = chunk_id(collection, "b", text_hash("b"))
        records.begin("b", [new], [])
        store.upsert(collection, [chunk(new, "b")])

        assert records.reconcile(store, collection) == 2

        assert records.intents() == {}
        assert records.get("b") is None
        kept = records.get("a")
        assert kept.chunks == {ids[0]: "s", ids[1]: "s"} and kept.content_hash == ""
        assert store.ids_by_source(collection) == {"a": {ids[0], ids[1]}}


def test_reconcile_finds_what_other_processes_wrote_by_source(store, collection):
    held = [chunk_id(collection, "a", text_hash(str(i))) for i in range(2)]
    written = [chunk_id(collection, "a", text_hash(f"new {i}")) for i in range(3)]
    store.ensure_collection(collection, dim=4)
    other = chunk_id(collection, "other", text_hash("o"))
    store.upsert(collection, [chunk(i, "a") for i in held] + [chunk(other, "other")])
    with Records(":memory:") as records:
        records.commit(SourceRecord("a", 1, 1, "old", {held[0]: "s", held[1]: "s"}))
        # Ray workers are about to write a, b (new) and c (no chunks written before the crash)
        records.begin_many(["a", "b", "c"])
        store.upsert(collection, [chunk(i, "a") for i in written])
        b = chunk_id(collection, "b", text_hash("b"))
        store.upsert(collection, [chunk(b, "b")])
        # the driver had already announced a's replaced chunk before it died
        records.begin("a", None, [held[1]])

        assert records.reconcile(store, collection) == 3

        assert records.intents() == {}
        assert records.get("a").chunks == {held[0]: "s"} and records.get("a").content_hash == ""
        assert records.get("b") is None and records.get("c") is None
        assert store.ids_by_source(collection) == {"a": {held[0]}, "other": {other}}


def test_touch_and_abandon_clear_an_intent(tmp_path):
    with Records(tmp_path / "r.sqlite") as records:
        records.commit(SourceRecord("a", 1, 1, "h", {"1": "s"}))
        records.begin_many(["a", "b"])
        assert records.intents() == {"a": (None, []), "b": (None, [])}
        records.touch("a", 2, 2)
        records.abandon("b")
        assert records.intents() == {}
        assert records.get("a") == SourceRecord("a", 2, 2, "h", {"1": "s"})
