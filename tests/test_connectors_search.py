"""Search on Milvus Lite and Qdrant local equals a numpy brute force of the same scoring, and each other.

One corpus with known vectors is loaded into both engines; for each query the expected scores are
computed in numpy: dense inner product, sparse inner product, RRF ``sum 1 / (k + rank)`` over the
two top-``candidates`` lists, and the weighted sum ``w_dense * dense + w_sparse * sparse`` (a
chunk absent from one list adds 0 for it). Ties are compared by score, not by order.
"""

import asyncio
import itertools
import shutil
import uuid

import numpy as np
import pytest

from m3ingest.connectors import ChunkRecord, Fusion, RetryPolicy, StoreError, open_store

DIM = 16
VOCAB = 120
N = 300
POLICY = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.05)


def _corpus(rng, n, colbert=False):
    dense = rng.normal(size=(n, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    records = []
    for i in range(n):
        tokens = rng.choice(VOCAB, int(rng.integers(3, 12)), replace=False)
        weights = rng.random(len(tokens)).astype(np.float32) * 0.4 + 0.001
        mv = None
        if colbert:
            mv = rng.normal(size=(int(rng.integers(2, 7)), DIM)).astype(np.float32)
            mv /= np.linalg.norm(mv, axis=1, keepdims=True)
        records.append(ChunkRecord(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"doc{i}")),
            text=f"text {i}", source=f"s{i % 10}.md", chunk_index=i // 10, start=0, end=1,
            content_hash=f"{i:064x}", metadata={"lang": ["en", "de", "fr"][i % 3]},
            dense=dense[i], sparse={int(t): float(w) for t, w in zip(tokens, weights, strict=True)}, colbert=mv,
        ))
    return records


def _query(rng):
    q = rng.normal(size=DIM).astype(np.float32)
    q /= np.linalg.norm(q)
    tokens = rng.choice(VOCAB, 6, replace=False)
    return q, {int(t): float(w) for t, w in zip(tokens, rng.random(6).astype(np.float32) + 0.05, strict=True)}


@pytest.fixture(scope="module")
def corpus():
    return _corpus(np.random.default_rng(42), N)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, corpus):
    folder = tmp_path_factory.mktemp("search")
    stores = {
        "milvus": open_store("milvus", str(folder / "m.db"), retry_policy=POLICY),
        "qdrant": open_store("qdrant", str(folder / "q"), retry_policy=POLICY),
    }
    for s in stores.values():
        s.ensure_collection("corpus", DIM)
        s.upsert("corpus", corpus)
    yield stores
    for s in stores.values():
        s.close()


# --- brute force ---------------------------------------------------------------------------------


def dense_scores(corpus, q):
    return {r.id: float(np.dot(r.dense.astype(np.float64), q.astype(np.float64))) for r in corpus}


def sparse_scores(corpus, q):
    out = {}
    for r in corpus:
        common = set(q) & set(r.sparse)
        if common:  # engines return only chunks sharing a token with the query
            out[r.id] = sum(float(np.float32(q[t])) * float(np.float32(r.sparse[t])) for t in common)
    return out


def top(scores, n):
    return sorted(scores, key=lambda i: -scores[i])[:n]


def rrf(lists, k):
    out = {}
    for ranked in lists:
        for rank, i in enumerate(ranked, start=1):
            out[i] = out.get(i, 0.0) + 1.0 / (k + rank)
    return out


def weighted(d, s, cand, w):
    ids = set(top(d, cand)) | set(top(s, cand))
    return {i: w[0] * (d[i] if i in top(d, cand) else 0.0) + w[1] * (s[i] if i in top(s, cand) else 0.0) for i in ids}


def assert_matches(hits, expected, k, tol=2e-5):
    """Hits are the top-k of ``expected``: each score right, best first, no better chunk left out."""
    assert len(hits) == min(k, len(expected))
    for h in hits:
        assert h.id in expected, f"{h.id} should not be a result"
        assert h.score == pytest.approx(expected[h.id], rel=tol, abs=tol)
    scores = [h.score for h in hits]
    assert all(a >= b - tol for a, b in itertools.pairwise(scores))
    best = sorted(expected.values(), reverse=True)[:k]
    np.testing.assert_allclose(sorted(scores, reverse=True), best, rtol=tol, atol=tol)


def expected_for(corpus, mode, q, fusion, k, cand):
    d, s = dense_scores(corpus, q[0]), sparse_scores(corpus, q[1])
    if mode == "dense":
        return d
    if mode == "sparse":
        return s
    if fusion.kind == "rrf":
        return rrf([top(d, cand), top(s, cand)], fusion.k)
    return weighted(d, s, cand, fusion.weights)


CASES = [
    ("dense", Fusion(), 10, None),
    ("sparse", Fusion(), 10, None),
    ("hybrid", Fusion.rrf(60), 10, 50),
    ("hybrid", Fusion.rrf(5), 10, 50),
    ("hybrid", Fusion.rrf(60), 20, 20),
    ("hybrid", Fusion.weighted(0.5, 0.5), 10, 50),
    ("hybrid", Fusion.weighted(0.4, 0.2), 15, 30),
]
IDS = [f"{m}-{f.kind}-k{f.k}-w{f.weights[0]}-{n}-{c}" for m, f, n, c in CASES]


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
@pytest.mark.parametrize("mode,fusion,k,cand", CASES, ids=IDS)
def test_search_equals_brute_force(engines, corpus, backend, mode, fusion, k, cand):
    rng = np.random.default_rng(7)
    for _ in range(4):
        q = _query(rng)
        hits = engines[backend].search(
            "corpus", dense=q[0], sparse=q[1], mode=mode, k=k, fusion=fusion, candidates=cand
        )
        assert_matches(hits, expected_for(corpus, mode, q, fusion, k, cand or k), k)


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_filtered_search_equals_brute_force_on_the_subset(engines, corpus, backend):
    q = _query(np.random.default_rng(8))
    spec = {"lang": "de", "chunk_index": {"$lt": 20}}
    subset = [r for r in corpus if r.metadata["lang"] == "de" and r.chunk_index < 20]
    for mode, fusion in (("dense", Fusion()), ("hybrid", Fusion.rrf()), ("hybrid", Fusion.weighted(0.3, 0.7))):
        hits = engines[backend].search("corpus", dense=q[0], sparse=q[1], mode=mode, k=8, filter=spec,
                                       fusion=fusion, candidates=30)
        assert_matches(hits, expected_for(subset, mode, q, fusion, 8, 30), 8)


@pytest.mark.parametrize("fusion", [Fusion.rrf(60), Fusion.rrf(1), Fusion.weighted(0.6, 0.4)], ids=str)
def test_engines_agree(engines, fusion):
    rng = np.random.default_rng(9)
    for _ in range(5):
        q = _query(rng)
        got = {
            name: s.search("corpus", dense=q[0], sparse=q[1], k=10, fusion=fusion, candidates=40)
            for name, s in engines.items()
        }
        m, qd = got["milvus"], got["qdrant"]
        np.testing.assert_allclose([h.score for h in m], [h.score for h in qd], rtol=2e-5, atol=2e-5)

        def by_score(hits):
            return {round(h.score, 5): set() for h in hits}

        groups_m, groups_q = by_score(m), by_score(qd)
        for h in m:
            groups_m[round(h.score, 5)].add(h.id)
        for h in qd:
            groups_q[round(h.score, 5)].add(h.id)
        last = min(groups_m)  # the lowest score may be cut off differently among equals
        assert {s: g for s, g in groups_m.items() if s != last} == {s: g for s, g in groups_q.items() if s != last}


def test_search_returns_payload_and_vectors_when_asked(engines, corpus):
    q = _query(np.random.default_rng(10))
    for s in engines.values():
        hit = s.search("corpus", dense=q[0], sparse=q[1], k=3, with_vectors=True)[0]
        want = next(r for r in corpus if r.id == hit.id)
        assert (hit.record.text, hit.record.source, hit.record.metadata) == (want.text, want.source, want.metadata)
        np.testing.assert_array_equal(hit.record.dense, want.dense)
        assert s.search("corpus", dense=q[0], sparse=q[1], k=3)[0].record.dense is None


def test_dbsf_is_qdrant_only(engines):
    q = _query(np.random.default_rng(11))
    hits = engines["qdrant"].search("corpus", dense=q[0], sparse=q[1], k=5, fusion=Fusion("dbsf"))
    assert len(hits) == 5
    with pytest.raises(ValueError, match="Qdrant only"):
        engines["milvus"].search("corpus", dense=q[0], sparse=q[1], k=5, fusion=Fusion("dbsf"))


def test_colbert_rerank_is_maxsim_over_the_candidates(tmp_path):
    rng = np.random.default_rng(12)
    docs = _corpus(rng, 40, colbert=True)
    q = _query(rng)
    qmv = rng.normal(size=(4, DIM)).astype(np.float32)
    # Every chunk is a dense candidate (candidates >= corpus), so the re-rank sees all of them.
    expected = {r.id: float((qmv.astype(np.float64) @ r.colbert.T.astype(np.float64)).max(axis=1).sum()) for r in docs}
    results = {}
    for backend, uri in (("milvus", str(tmp_path / "m.db")), ("qdrant", str(tmp_path / "q"))):
        with open_store(backend, uri, retry_policy=POLICY) as s:
            s.ensure_collection("mv", DIM, colbert=True)
            s.upsert("mv", docs)
            hits = s.search("mv", dense=q[0], sparse=q[1], k=5, candidates=50, colbert=qmv)
            assert_matches(hits, expected, 5)
            results[backend] = [h.id for h in hits]
    assert results["milvus"] == results["qdrant"]


# --- async: asearch / aget answer exactly what search / get answer ---------------------------------


def assert_same_records(got, want):
    assert [r.id for r in got] == [r.id for r in want]
    for g, w in zip(got, want, strict=True):
        assert (g.text, g.source, g.chunk_index, g.start, g.end, g.content_hash, g.metadata) == (
            w.text, w.source, w.chunk_index, w.start, w.end, w.content_hash, w.metadata
        )
        for name in ("dense", "colbert"):
            a, b = getattr(g, name), getattr(w, name)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)
        assert g.sparse == w.sparse


def assert_same_hits(got, want):
    assert_same_records([h.record for h in got], [h.record for h in want])
    assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=1e-6, abs=1e-7)


ASYNC_CASES = [
    dict(mode="dense"),
    dict(mode="sparse"),
    dict(mode="hybrid", fusion=Fusion.rrf(60), candidates=50),
    dict(mode="hybrid", fusion=Fusion.weighted(0.4, 0.2), candidates=30),
    dict(mode="hybrid", filter={"lang": "de", "chunk_index": {"$lt": 20}}, candidates=30),
    dict(mode="dense", with_vectors=True),
    dict(mode="sparse", with_vectors=True, filter={"source": {"$in": ["s1.md", "s2.md"]}}),
]


async def _sync_and_async(store, collection, queries, case):
    """(search, asearch) results of each query, the async ones run concurrently."""
    want = [store.search(collection, dense=q[0], sparse=q[1], k=10, **case) for q in queries]
    got = await asyncio.gather(
        *(store.asearch(collection, dense=q[0], sparse=q[1], k=10, **case) for q in queries)
    )
    return got, want


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
@pytest.mark.parametrize("case", ASYNC_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_asearch_equals_search(engines, backend, case):
    rng = np.random.default_rng(13)
    queries = [_query(rng) for _ in range(4)]
    got, want = asyncio.run(_sync_and_async(engines[backend], "corpus", queries, case))
    assert any(want)
    for g, w in zip(got, want, strict=True):
        assert_same_hits(g, w)


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
@pytest.mark.parametrize("with_vectors", [False, True])
def test_aget_equals_get(engines, corpus, backend, with_vectors):
    store = engines[backend]
    ids = [corpus[i].id for i in (5, 3, 250, 3)] + ["00000000-0000-5000-8000-000000000000"]
    got = asyncio.run(store.aget("corpus", ids, with_vectors=with_vectors))
    want = store.get("corpus", ids, with_vectors=with_vectors)
    assert len(want) == 3
    assert_same_records(got, want)
    assert asyncio.run(store.aget("corpus", [])) == []


def test_milvus_async_reads_never_touch_the_sync_client(engines, corpus, monkeypatch):
    store = engines["milvus"]
    q = _query(np.random.default_rng(14))
    want = store.search("corpus", dense=q[0], sparse=q[1], k=5, with_vectors=True)
    monkeypatch.setattr(store, "client", None)  # any sync call now fails

    async def main():
        hits = await store.asearch("corpus", dense=q[0], sparse=q[1], k=5, with_vectors=True)
        records = await store.aget("corpus", [h.id for h in hits])
        return hits, records

    hits, records = asyncio.run(main())
    assert_same_hits(hits, want)
    assert [r.id for r in records] == [h.id for h in want]


def test_async_errors_name_the_operation_and_collection(engines):
    q = _query(np.random.default_rng(15))
    for name, store in engines.items():
        with pytest.raises(StoreError, match=f"^{name} at {store.uri}: .*search.* collection 'nowhere'"):
            asyncio.run(store.asearch("nowhere", dense=q[0], sparse=q[1], k=3))


def test_qdrant_server_path_async_client_equals_sync(tmp_path, corpus):
    """The AsyncQdrantClient code path (server URLs) on a real engine: a copy of the same local storage.

    Local mode cannot share its storage with a second client, so the async client here opens a
    copy of the folder the sync client serves, made while no client held it.
    """
    with open_store("qdrant", str(tmp_path / "q"), retry_policy=POLICY) as s:
        s.ensure_collection("corpus", DIM)
        s.upsert("corpus", corpus)
    shutil.copytree(tmp_path / "q", tmp_path / "copy")
    store = open_store("qdrant", str(tmp_path / "q"), retry_policy=POLICY)
    store._async_kwargs = {"path": str(tmp_path / "copy")}  # as a server URL would set it
    rng = np.random.default_rng(16)
    queries = [_query(rng) for _ in range(3)]

    async def main():
        out = [await _sync_and_async(store, "corpus", queries, case) for case in ASYNC_CASES]
        ids = [corpus[i].id for i in (7, 1, 9)]
        got = await store.aget("corpus", ids, with_vectors=True)
        await store.aclose()
        return out, got

    results, got = asyncio.run(main())
    for got_hits, want_hits in results:
        for g, w in zip(got_hits, want_hits, strict=True):
            assert_same_hits(g, w)
    with open_store("qdrant", str(tmp_path / "q"), retry_policy=POLICY) as s:
        assert_same_records(got, s.get("corpus", [corpus[i].id for i in (7, 1, 9)], with_vectors=True))
