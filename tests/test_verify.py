"""verify: drift between records and the real store is found, reported and repaired."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from m3ingest.connectors import ChunkRecord
from m3ingest.drift import compare, delete_orphans, find_drift

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


# --- end to end: a real ingestion, drift made by hand, verify and repair --------------------------


@pytest.fixture(params=["milvus", "qdrant"])
def ingested(request, tmp_path):
    import m3ingest

    from ingest_helpers import make_config, paragraphs

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"doc{i}.md").write_text(paragraphs(i, 6))
    config = make_config(tmp_path, request.param)
    summary = m3ingest.sync([docs], config)
    assert summary.files_new == 4
    return docs, config


def test_verify_reports_drift_and_repair_restores_the_store(ingested) -> None:
    import m3ingest
    from m3ingest.connectors import store_from_config
    from m3ingest.context import CollectionContext
    from m3ingest.records import Records

    docs, config = ingested
    assert m3ingest.verify(config).clean
    with (
        store_from_config(config.store) as store,
        Records(CollectionContext.from_config(config).resolved(store).records_path) as rec,
    ):
        recorded = rec.chunk_ids()
        lost = sorted(recorded["doc1.md"])[:2]
        wiped = sorted(recorded["doc2.md"])
        kept = store.get("docs", sorted(recorded["doc0.md"])[:1], with_vectors=True)[0]
        store.delete("docs", lost + wiped)
        kept.id, kept.source = str(uuid.uuid4()), "ghost.md"
        store.upsert("docs", [kept])

    found = m3ingest.verify(config)
    assert not found.clean
    assert found.drift.missing == {"doc1.md": set(lost), "doc2.md": set(wiped)}
    assert found.drift.orphans == {"ghost.md": {kept.id}}
    assert found.drift.sources_without_chunks == ["doc2.md"]

    repaired = m3ingest.verify(config, repair=True, paths=[docs])
    assert repaired.repaired and repaired.orphans_deleted == 1 and not repaired.deferred
    assert repaired.reencoded == ["doc1.md", "doc2.md"]
    assert repaired.after is not None and repaired.after.clean and repaired.clean
    with store_from_config(config.store) as store:
        assert store.ids_by_source("docs") == recorded


def test_repair_without_folders_leaves_the_reencoding_to_the_next_sync(ingested) -> None:
    import m3ingest
    from m3ingest.connectors import store_from_config
    from m3ingest.context import CollectionContext
    from m3ingest.records import Records

    docs, config = ingested
    with (
        store_from_config(config.store) as store,
        Records(CollectionContext.from_config(config).resolved(store).records_path) as rec,
    ):
        recorded = rec.chunk_ids()
        store.delete("docs", sorted(recorded["doc3.md"])[:1])
    result = m3ingest.verify(config, repair=True)
    assert result.deferred and result.reencoded == ["doc3.md"]
    summary = m3ingest.sync([docs], config)
    assert summary.files_changed == 1 and summary.chunks_written == 1
    assert m3ingest.verify(config).clean
    with store_from_config(config.store) as store:
        assert store.ids_by_source("docs") == recorded


def test_cli_verify_exits_5_on_drift(ingested) -> None:
    from click.testing import CliRunner

    from m3ingest.cli import app
    from m3ingest.connectors import store_from_config

    docs, config = ingested
    file = docs.parent / "job.toml"
    file.write_text(
        f'[store]\nbackend = "{config.store.backend}"\nuri = "{config.store.uri}"\n'
        f'collection = "docs"\n[model]\nname = "{config.model.name}"\ndevice = "cpu"\n'
        f"[chunking]\nchunk_size = {config.chunking.chunk_size}\noverlap = {config.chunking.overlap}\n"
    )
    args = ["verify", "--config", str(file), "--json"]
    assert CliRunner().invoke(app, args).exit_code == 0
    with store_from_config(config.store) as store:
        store.delete("docs", [sorted(next(iter(store.ids_by_source("docs").values())))[0]])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 5
    assert '"missing_chunks": 1' in result.output
    assert CliRunner().invoke(app, [*args, "--repair", str(docs)]).exit_code == 0
