"""The connector suite, run unchanged on Milvus Lite, Qdrant local mode and a Milvus server."""

import asyncio
import uuid

import numpy as np
import pytest

from m3ingest.config import StoreConfig
from m3ingest.connectors import (
    ChunkRecord,
    FilterError,
    RetryPolicy,
    SchemaMismatchError,
    StoreError,
    open_store,
    retry,
    store_from_config,
)
from m3ingest.connectors.milvus import VARCHAR_MAX

from conftest import open_test_store

DIM = 8
# qdrant-client checks a server's version from a background thread; the unreachable one has none.
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")


@pytest.fixture(scope="module", params=["milvus", "qdrant", "milvus-server"])
def store(request, tmp_path_factory):
    """conftest's embedded stores, and a Milvus server reached by URI running the same suite."""
    s = open_test_store(request.param, request, tmp_path_factory)
    yield s
    s.close()


def unit(rng, dim=DIM):
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def make(rng, source="a.md", index=0, text=None, metadata=None, colbert=False):
    tokens = int(rng.integers(2, 6))
    return ChunkRecord(
        id=str(uuid.uuid4()),
        text=text if text is not None else f"chunk {index} of {source}",
        source=source,
        chunk_index=index,
        start=index * 100,
        end=index * 100 + 99,
        content_hash=f"{index:064x}",
        metadata=metadata if metadata is not None else {"lang": "en", "headings": ["Intro"]},
        dense=unit(rng),
        sparse={int(t): float(w) for t, w in zip(rng.choice(50, 4, replace=False), rng.random(4) + 0.01, strict=True)},
        colbert=np.stack([unit(rng) for _ in range(tokens)]) if colbert else None,
    )


def assert_same(got, want, vectors=True):
    assert (got.id, got.text, got.source, got.chunk_index, got.start, got.end, got.content_hash) == (
        want.id, want.text, want.source, want.chunk_index, want.start, want.end, want.content_hash)
    assert got.metadata == want.metadata
    if vectors:
        np.testing.assert_array_equal(got.dense, want.dense)
        assert got.sparse == {i: float(np.float32(w)) for i, w in want.sparse.items()}
        if want.colbert is None:
            assert got.colbert is None
        else:
            np.testing.assert_array_equal(got.colbert, want.colbert)


def test_upsert_get_round_trip(store, collection):
    rng = np.random.default_rng(1)
    store.ensure_collection(collection, DIM, colbert=True)
    records = [make(rng, "a.md", i, colbert=True) for i in range(5)] + [make(rng, "b.md", 0)]
    store.upsert(collection, records)
    assert store.count(collection) == 6
    got = store.get(collection, [r.id for r in records] + [str(uuid.uuid4())], with_vectors=True)
    assert [g.id for g in got] == [r.id for r in records]
    for g, r in zip(got, records, strict=True):
        assert_same(g, r)
    plain = store.get(collection, [records[0].id])[0]
    assert_same(plain, records[0], vectors=False)
    assert plain.dense is None and plain.sparse is None and plain.colbert is None


def test_upsert_replaces_by_id(store, collection):
    rng = np.random.default_rng(2)
    store.ensure_collection(collection, DIM)
    r = make(rng)
    store.upsert(collection, [r])
    r2 = make(rng, text="new text")
    r2.id = r.id
    store.upsert(collection, [r2])
    assert store.count(collection) == 1
    assert_same(store.get(collection, [r.id], with_vectors=True)[0], r2)


def test_delete_by_ids_and_by_source_leaves_no_orphan(store, collection):
    rng = np.random.default_rng(3)
    store.ensure_collection(collection, DIM)
    odd = 'dir/we"ird \\ name\'s.md'
    records = [make(rng, src, i) for src in ("a.md", "b.md", odd) for i in range(4)]
    store.upsert(collection, records)
    by_source = store.ids_by_source(collection)
    assert by_source == {src: {r.id for r in records if r.source == src} for src in ("a.md", "b.md", odd)}
    assert store.ids_by_source(collection, source=odd) == {odd: by_source[odd]}
    assert store.ids_by_source(collection, source="a") == {}

    store.delete(collection, [records[0].id, str(uuid.uuid4())])
    store.delete_source(collection, odd)
    store.delete_source(collection, "no-such-source")
    left = store.ids_by_source(collection)
    assert left == {"a.md": {r.id for r in records[1:4]}, "b.md": {r.id for r in records[4:8]}}
    assert store.count(collection) == 7
    assert store.get(collection, [r.id for r in records[8:]]) == []


def test_ids_by_source_pages_through_many_rows(store, collection):
    rng = np.random.default_rng(4)
    store.ensure_collection(collection, DIM)
    records = [make(rng, f"s{i % 7}.md", i) for i in range(350)]
    store.upsert(collection, records)
    store.scan_batch = 100
    try:
        held = store.ids_by_source(collection)
    finally:
        del store.scan_batch  # back to the class default
    assert sum(len(v) for v in held.values()) == 350
    assert held["s3.md"] == {r.id for r in records if r.source == "s3.md"}


def test_writes_are_batched_by_bytes(store, collection):
    rng = np.random.default_rng(5)
    store.ensure_collection(collection, DIM)
    store.max_batch_bytes = 2000  # a few rows per request
    records = [make(rng, "a.md", i, text="x" * 700) for i in range(20)]
    store.upsert(collection, records)
    assert store.count(collection) == 20


FILTER_CASES = [
    ({"source": "a.md"}, lambda r: r.source == "a.md"),
    ({"source": {"$in": ["b.md", "c.md"]}}, lambda r: r.source in ("b.md", "c.md")),
    ({"chunk_index": {"$gte": 2, "$lt": 5}}, lambda r: 2 <= r.chunk_index < 5),
    ({"end": {"$gt": 350}}, lambda r: r.end > 350),
    ({"lang": "de"}, lambda r: r.metadata["lang"] == "de"),
    ({"metadata.lang": {"$in": ["de", "fr"]}}, lambda r: r.metadata["lang"] in ("de", "fr")),
    ({"metadata.stars": {"$lte": 2}}, lambda r: r.metadata["stars"] <= 2),
    ({"score": 0.5}, lambda r: r.metadata["score"] == 0.5),
    ({"flag": True}, lambda r: r.metadata["flag"] is True),
    ({"nested.level": 1}, lambda r: r.metadata["nested"]["level"] == 1),
    ({"source": "a.md", "lang": "en"}, lambda r: r.source == "a.md" and r.metadata["lang"] == "en"),
    ({"$and": [{"source": "b.md"}, {"chunk_index": {"$gt": 1}}]}, lambda r: r.source == "b.md" and r.chunk_index > 1),
    ({"$or": [{"source": "c.md"}, {"lang": "fr"}]}, lambda r: r.source == "c.md" or r.metadata["lang"] == "fr"),
    ({"source": 'x" or source != "'}, lambda r: False),
    ({"source": "x' or source != '"}, lambda r: False),
    ({"lang": 'en" or metadata["lang"] != "'}, lambda r: False),
    ({"source": {"$in": ['a.md" or "1" == "1']}}, lambda r: False),
    # Integers beyond int64 on the int64 fields: answered alike by every engine.
    ({"chunk_index": 2**63}, lambda r: False),
    ({"chunk_index": -(2**63) - 1}, lambda r: False),
    ({"chunk_index": {"$lt": 2**80}}, lambda r: True),
    ({"start": {"$gt": -(2**70)}}, lambda r: True),
    ({"end": {"$lte": -(2**64)}}, lambda r: False),
    ({"chunk_index": {"$gte": 2**64}}, lambda r: False),
    ({"chunk_index": {"$in": [2**64, 1, -(2**64)]}}, lambda r: r.chunk_index == 1),
    ({"chunk_index": {"$gt": 1, "$lt": 2**64}}, lambda r: r.chunk_index > 1),
    ({"$or": [{"chunk_index": 2**64}, {"source": "a.md"}]}, lambda r: r.source == "a.md"),
    ({"$and": [{"chunk_index": {"$gte": -(2**65), "$lt": 3}}, {"lang": "de"}]},
     lambda r: r.chunk_index < 3 and r.metadata["lang"] == "de"),
    ({"score": {"$lt": 1e300}, "stars": {"$gt": -1.5}}, lambda r: True),
]


@pytest.fixture(scope="module")
def filter_collection(store):
    name = f"filters_{uuid.uuid4().hex[:8]}"
    yield name
    store.drop_collection(name)


@pytest.fixture(scope="module")
def filter_corpus(store, filter_collection):
    rng = np.random.default_rng(6)
    collection = filter_collection
    store.ensure_collection(collection, DIM)
    records = []
    for i in range(24):
        meta = {
            "lang": ["en", "de", "fr"][i % 3],
            "stars": i % 5,
            "score": [0.5, 1.25][i % 2],
            "flag": i % 4 == 0,
            "nested": {"level": i % 2},
        }
        records.append(make(rng, ["a.md", "b.md", "c.md", "d.md"][i % 4], i // 4, metadata=meta))
    store.upsert(collection, records)
    return records


@pytest.mark.parametrize("spec,keep", FILTER_CASES, ids=[str(c[0]) for c in FILTER_CASES])
def test_filters_select_exactly(store, filter_collection, filter_corpus, spec, keep):
    collection = filter_collection
    want = {r.id for r in filter_corpus if keep(r)}
    query = filter_corpus[0]
    hits = store.search(collection, dense=query.dense, mode="dense", k=100, filter=spec)
    assert {h.id for h in hits} == want
    hits = store.search(collection, dense=query.dense, sparse=query.sparse, mode="hybrid", k=100,
                        candidates=100, filter=spec)
    assert {h.id for h in hits} <= want


def test_filters_nest_up_to_the_depth_limit(store, filter_collection, filter_corpus):
    from m3ingest.connectors.filters import MAX_DEPTH

    spec = {"source": "a.md"}
    for i in range(MAX_DEPTH):  # and-ed with what always holds, or-ed with what never does
        spec = {"$and": [spec, {"chunk_index": {"$gte": 0}}]} if i % 2 else {"$or": [spec, {"start": -1}]}
    hits = store.search(filter_collection, dense=filter_corpus[0].dense, mode="dense", k=100, filter=spec)
    assert {h.id for h in hits} == {r.id for r in filter_corpus if r.source == "a.md"}
    with pytest.raises(FilterError, match="more than 32 deep"):
        store.search(filter_collection, dense=filter_corpus[0].dense, mode="dense", filter={"$or": [spec]})


def test_bad_filter_names_the_key(store, filter_collection, filter_corpus):
    with pytest.raises(FilterError, match="bogus"):
        store.search(
            filter_collection, dense=filter_corpus[0].dense, mode="dense", filter={"chunk_index": {"$bogus": 1}}
        )


def test_schema_mismatch_names_the_difference(store, collection):
    store.ensure_collection(collection, DIM)
    store.ensure_collection(collection, DIM)  # the same schema again is fine
    with pytest.raises(SchemaMismatchError, match=r"dimension is 8, this run needs 16") as e:
        store.ensure_collection(collection, 16)
    assert collection in str(e.value)
    with pytest.raises(SchemaMismatchError, match="colbert"):
        store.ensure_collection(collection, DIM, colbert=True)


def test_text_longer_than_a_varchar_round_trips(store, collection):
    rng = np.random.default_rng(7)
    store.ensure_collection(collection, DIM)
    text = "é" * 40_000 + "中文🎉" * 20_000 + "end"  # 80 kB + 220 kB: five VARCHARs' worth
    assert len(text.encode()) > 4 * VARCHAR_MAX
    r = make(rng, text=text)
    store.upsert(collection, [r])
    assert store.get(collection, [r.id])[0].text == text
    hit = store.search(collection, dense=r.dense, mode="dense", k=1)[0]
    assert hit.record.text == text


def test_alias_set_and_swap_serves_the_new_collection(store, collection):
    rng = np.random.default_rng(8)
    v1, v2, alias = collection + "_v1", collection + "_v2", collection
    for name, src in ((v1, "old.md"), (v2, "new.md")):
        store.ensure_collection(name, DIM)
        store.upsert(name, [make(rng, src, i) for i in range(3)])
    try:
        store.set_alias(alias, v1)
        assert store.resolve_alias(alias) == v1
        assert set(store.ids_by_source(alias)) == {"old.md"}
        store.set_alias(alias, v2)
        assert store.resolve_alias(alias) == v2
        assert set(store.ids_by_source(alias)) == {"new.md"}
        hits = store.search(alias, dense=unit(rng), mode="dense", k=3)
        assert {h.record.source for h in hits} == {"new.md"}
        assert alias not in store.list_collections()
        assert {v1, v2} <= set(store.list_collections())
        store.drop_alias(alias)
        assert store.resolve_alias(alias) is None
        store.drop_alias(alias)
    finally:
        store.drop_collection(v1)
        store.drop_collection(v2)
    assert store.resolve_alias("never-made") is None


def test_drop_collection_is_idempotent(store, collection):
    store.ensure_collection(collection, DIM)
    assert store.has_collection(collection)
    store.drop_collection(collection)
    store.drop_collection(collection)
    assert not store.has_collection(collection)


def test_missing_collection_is_a_store_error_naming_it(store):
    with pytest.raises(StoreError, match="no_such_collection"):
        store.count("no_such_collection")


def test_transient_errors_are_retried_then_named():
    calls = []

    def flaky():
        calls.append(1)
        raise ConnectionResetError("connection reset by peer")

    policy = RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.002)
    with pytest.raises(StoreError) as e:
        retry.call(flaky, store="milvus", operation="upsert of 3 chunks", collection="docs",
                   is_transient=retry.is_transient_builtin, policy=policy)
    assert len(calls) == 3
    assert "milvus: upsert of 3 chunks on collection 'docs' failed after 3 attempts" in str(e.value)
    assert isinstance(e.value.__cause__, ConnectionResetError)


def test_transient_error_then_success_returns_the_result():
    outcomes = iter([TimeoutError("timed out"), "done"])

    def once_flaky():
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    policy = RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.002)
    assert retry.call(once_flaky, store="qdrant", operation="count", collection="c",
                      is_transient=retry.is_transient_builtin, policy=policy) == "done"


def test_permanent_errors_are_not_retried():
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("bad request")

    with pytest.raises(StoreError, match="qdrant: count on collection 'c' failed: bad request"):
        retry.call(broken, store="qdrant", operation="count", collection="c",
                   is_transient=retry.is_transient_builtin, policy=RetryPolicy(attempts=5))
    assert len(calls) == 1


def test_async_calls_are_retried_and_named_like_sync_ones():
    calls = []

    async def flaky():
        calls.append(1)
        raise ConnectionResetError("connection reset by peer")

    policy = RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.002)
    with pytest.raises(StoreError) as e:
        asyncio.run(retry.acall(flaky, store="milvus", operation="hybrid search", collection="docs",
                                is_transient=retry.is_transient_builtin, policy=policy))
    assert len(calls) == 3
    assert "milvus: hybrid search on collection 'docs' failed after 3 attempts" in str(e.value)
    outcomes = iter([TimeoutError("timed out"), "done"])

    async def once_flaky():
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    assert asyncio.run(retry.acall(once_flaky, store="qdrant", operation="count", collection="c",
                                   is_transient=retry.is_transient_builtin, policy=policy)) == "done"


def test_qdrant_server_async_client_is_retried_then_a_store_error():
    policy = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02)
    store = open_store("qdrant", "http://127.0.0.1:9", timeout=1, retry_policy=policy)

    async def main():
        try:
            await store.aget("docs", [str(uuid.uuid4())])
        finally:
            await store.aclose()

    message = "qdrant at http://127.0.0.1:9: get of 1 chunks on collection 'docs' failed after 2 attempts"
    with pytest.raises(StoreError, match=message):
        asyncio.run(main())


def test_flush_keeps_every_chunk_searchable(store, collection):
    rng = np.random.default_rng(12)
    store.ensure_collection(collection, DIM)
    records = [make(rng, "a.md", i) for i in range(20)]
    store.upsert(collection, records)
    store.flush(collection)
    assert store.count(collection) == 20
    hit = store.search(collection, dense=records[7].dense, sparse=records[7].sparse, mode="dense", k=1)[0]
    assert hit.id == records[7].id
    store.upsert(collection, records[:2])  # writes after a flush go on as before
    assert store.count(collection) == 20


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_unreachable_server_is_retried_then_a_store_error(backend):
    policy = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02)
    with pytest.raises(StoreError, match=f"^{backend} at http://127.0.0.1:9: .* failed after 2 attempts") as e:
        open_store(backend, "http://127.0.0.1:9", timeout=1, retry_policy=policy).has_collection("docs")
    assert "docs" in str(e.value) or "connect failed" in str(e.value)


def test_store_from_config_opens_the_configured_backend(tmp_path):
    with store_from_config(StoreConfig(backend="qdrant", uri=str(tmp_path / "q"))) as s:
        assert s.backend == "qdrant"
        s.ensure_collection("c", DIM)
        assert s.list_collections() == ["c"]
    with pytest.raises(ValueError, match=r"store\.backend"):
        open_store("chroma", "x")


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_reopened_store_serves_what_was_written(tmp_path, backend):
    rng = np.random.default_rng(9)
    uri = str(tmp_path / ("m.db" if backend == "milvus" else "q"))
    records = [make(rng, "a.md", i) for i in range(3)]
    with open_store(backend, uri) as s:
        s.ensure_collection("c", DIM)
        s.upsert("c", records)
    with open_store(backend, uri) as s:  # no ensure_collection: a retriever just searches
        assert s.count("c") == 3
        hit = s.search("c", dense=records[1].dense, sparse=records[1].sparse, k=1)[0]
        assert hit.id == records[1].id


def test_chunk_without_lexical_weights(store, collection):
    rng = np.random.default_rng(10)
    store.ensure_collection(collection, DIM)
    empty, other = make(rng, "a.md", 0), make(rng, "a.md", 1)
    empty.sparse = {}
    store.upsert(collection, [empty, other])
    assert store.get(collection, [empty.id], with_vectors=True)[0].sparse == {}
    everything = {t: 1.0 for t in range(50)}
    assert [h.id for h in store.search(collection, sparse=everything, mode="sparse", k=5)] == [other.id]
    hits = store.search(collection, dense=empty.dense, sparse={}, k=2)  # an empty lexical query
    assert hits[0].id == empty.id


def test_colbert_into_a_collection_without_it_is_a_store_error(store, collection):
    rng = np.random.default_rng(11)
    store.ensure_collection(collection, DIM)
    with pytest.raises(StoreError, match=collection):
        store.upsert(collection, [make(rng, colbert=True)])
    assert store.count(collection) == 0


def test_milvus_text_beyond_the_overflow_parts_is_refused_whole(tmp_path):
    from m3ingest.connectors.milvus import TEXT_PARTS_MAX

    rng = np.random.default_rng(12)
    too_long = make(rng, "big.md", 1, text="x" * ((TEXT_PARTS_MAX + 1) * VARCHAR_MAX + 1))
    with open_store("milvus", str(tmp_path / "m.db")) as s:
        s.ensure_collection("c", DIM)
        with pytest.raises(
            StoreError, match=r"chunk .* of big.md has 16842496 bytes of text, more than the 16842495.*chunk_size"
        ):
            s.upsert("c", [make(rng, "ok.md", 0), too_long])
        assert s.count("c") == 0
