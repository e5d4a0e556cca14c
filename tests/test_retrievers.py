"""M3Searcher and M3Retriever on real embedded Milvus Lite and Qdrant local stores."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from langchain_core.documents import Document
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda

from m3ingest.config import load_config
from m3ingest.connectors import Fusion, StoreError
from m3ingest.encoder import M3Encoder, colbert_score, dense_score, lexical_score, m3_score
from m3ingest.retrievers import M3Retriever, M3Searcher, SearchResult

from retrievers_corpus import CHUNKS, QUERIES, TINY_M3, SpreadEncoder, build, ranked_lists, rrf, weighted

BUILTIN = ("source", "chunk_index", "start", "end", "content_hash")


@pytest.fixture(scope="module")
def encoder():
    return M3Encoder(TINY_M3, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def corpus(store, encoder):
    """(collection, records) of a collection without ColBERT vectors."""
    name = f"r_{uuid.uuid4().hex[:10]}"
    records = build(store, encoder, name)
    yield name, records
    store.drop_collection(name)


@pytest.fixture(scope="module")
def colbert_corpus(store, encoder):
    """(collection, records) of a collection that stores ColBERT vectors."""
    name = f"rc_{uuid.uuid4().hex[:10]}"
    records = build(store, encoder, name, colbert=True)
    yield name, records
    store.drop_collection(name)


@pytest.fixture(scope="module")
def spread(encoder):
    return SpreadEncoder(encoder)


@pytest.fixture(scope="module")
def spread_corpus(store, spread):
    """(collection, records) with well separated dense vectors, for exact ranking comparisons."""
    name = f"rs_{uuid.uuid4().hex[:10]}"
    records = build(store, spread, name)
    yield name, records
    store.drop_collection(name)


@pytest.fixture
def searcher(store, encoder, corpus):
    return M3Searcher(store, encoder, corpus[0], k=4)


def _close(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid", "m3"])
def test_each_mode_returns_documents_with_metadata_ids_and_scores(searcher, corpus, mode):
    records = {r.id: r for r in corpus[1]}
    docs = M3Retriever(searcher=searcher, mode=mode, k=5).invoke(QUERIES[0])
    assert len(docs) == 5
    assert all(isinstance(d, Document) for d in docs)
    for doc in docs:
        record = records[doc.id]
        assert doc.page_content == record.text
        assert {k: doc.metadata[k] for k in BUILTIN} == {k: getattr(record, k) for k in BUILTIN}
        assert doc.metadata["lang"] == record.metadata["lang"]
        assert doc.metadata["headings"] == record.metadata["headings"]
        expected = {"dense", "sparse", "colbert", "m3"} if mode == "m3" else {mode}
        assert set(doc.metadata["scores"]) == expected
        assert doc.metadata["score"] == doc.metadata["scores"][mode]
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("query", QUERIES)
def test_m3_scores_equal_the_encoders_scoring(searcher, encoder, corpus, query):
    n = len(CHUNKS)
    results = searcher.search(query, k=n, mode="m3")
    q = encoder.encode([query], colbert=True)
    assert len(results) == n  # candidates >= collection: every chunk is re-ranked
    for r in results:
        d = encoder.encode([r.text], colbert=True)
        parts = (
            dense_score(q.dense[0], d.dense[0]),
            lexical_score(q.sparse[0], d.sparse[0]),
            colbert_score(q.colbert[0], d.colbert[0]),
        )
        assert _close(r.scores["dense"], parts[0])
        assert _close(r.scores["sparse"], parts[1])
        assert _close(r.scores["colbert"], parts[2])
        assert _close(r.scores["m3"], m3_score(*parts, weights=(0.4, 0.2, 0.4)))
        assert r.score == r.scores["m3"]
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_m3_weights_are_settable(store, encoder, corpus):
    weights = (1.0, 0.3, 0.0)
    s = M3Searcher(store, encoder, corpus[0], mode="m3", k=3, m3_weights=weights)
    for r in s.search(QUERIES[1]):
        expected = m3_score(r.scores["dense"], r.scores["sparse"], r.scores["colbert"], weights=weights)
        assert _close(r.score, expected)
        assert _close(r.score, r.scores["dense"] + 0.3 * r.scores["sparse"])


def test_m3_uses_stored_colbert_vectors_and_equals_re_encoding(store, encoder, corpus, colbert_corpus):
    plain = M3Searcher(store, encoder, corpus[0], mode="m3", k=6)
    stored = M3Searcher(store, encoder, colbert_corpus[0], mode="m3", k=6)
    for query in QUERIES:
        a, b = plain.search(query), stored.search(query)
        assert [r.text for r in a] == [r.text for r in b]
        for x, y in zip(a, b, strict=True):
            assert all(_close(x.scores[key], y.scores[key]) for key in x.scores)


@pytest.mark.parametrize("query", QUERIES)
def test_m3_reranks_the_union_of_the_dense_and_sparse_tops(store, spread, spread_corpus, query):
    name, records = spread_corpus
    got = M3Searcher(store, spread, name, mode="m3", candidates=3, k=3).search(query)
    q = spread.encode([query], colbert=True)
    dense, sparse = ranked_lists(records, q.dense[0], q.sparse[0], candidates=3)
    union = [r for r in records if r.id in {*dense, *sparse}]
    expected = {
        r.id: m3_score(
            dense_score(q.dense[0], r.dense),
            lexical_score(q.sparse[0], r.sparse),
            colbert_score(q.colbert[0], r.colbert),
        )
        for r in union
    }
    assert [r.score for r in got] == pytest.approx(sorted(expected.values(), reverse=True)[:3], rel=1e-4)
    assert all(_close(r.score, expected[r.id]) for r in got)


@pytest.mark.parametrize("query", QUERIES)
def test_dense_and_sparse_rankings_equal_brute_force(store, spread, spread_corpus, query):
    name, records = spread_corpus
    searcher = M3Searcher(store, spread, name)
    q = spread.encode([query])
    dense, sparse = ranked_lists(records, q.dense[0], q.sparse[0], candidates=len(records))
    for mode, expected in (("dense", dense), ("sparse", sparse)):
        got = searcher.search(query, mode=mode, k=5)
        top = sorted(expected.values(), reverse=True)[:5]
        assert [r.score for r in got] == pytest.approx(top, rel=1e-4, abs=1e-5)
        assert all(_close(r.score, expected[r.id]) for r in got)


@pytest.mark.parametrize("fusion", [Fusion.rrf(60), Fusion.rrf(5), Fusion.weighted(0.7, 0.3)])
@pytest.mark.parametrize("query", QUERIES)
def test_hybrid_fusion_equals_brute_force(store, spread, spread_corpus, fusion, query):
    name, records = spread_corpus
    s = M3Searcher(store, spread, name, mode="hybrid", fusion=fusion, candidates=5, k=4)
    q = spread.encode([query])
    dense, sparse = ranked_lists(records, q.dense[0], q.sparse[0], candidates=5)
    expected = rrf([dense, sparse], fusion.k) if fusion.kind == "rrf" else weighted(dense, sparse, fusion.weights)
    got = s.search(query)
    assert len(got) == 4
    top = sorted(expected.values(), reverse=True)[:4]
    assert [r.score for r in got] == pytest.approx(top, rel=1e-4, abs=1e-6)
    assert all(_close(r.score, expected[r.id]) for r in got)
    assert all(set(r.scores) == {"hybrid"} for r in got)


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid", "m3"])
def test_filters_apply_at_construction_and_per_call(store, encoder, corpus, mode):
    name = corpus[0]
    by_source = M3Searcher(store, encoder, name, mode=mode, k=10, filter={"source": "guide/milvus.md"})
    got = by_source.search(QUERIES[0])
    assert {r.metadata["source"] for r in got} == {"guide/milvus.md"} and len(got) == 2

    german = M3Retriever(searcher=M3Searcher(store, encoder, name, k=10), mode=mode).invoke(
        QUERIES[1], filter={"lang": "de"}
    )
    assert {d.metadata["source"] for d in german} == {"de/suche.md"} and len(german) == 2

    # A per-call filter narrows the retriever's own filter.
    scoped = M3Retriever(searcher=by_source, filter={"chunk_index": {"$gte": 1}})
    narrowed = scoped.invoke(QUERIES[0], filter={"lang": "en"})
    assert [(d.metadata["source"], d.metadata["chunk_index"]) for d in narrowed] == [("guide/milvus.md", 1)]


def test_k_and_mode_per_call_override_the_defaults(searcher):
    retriever = M3Retriever(searcher=searcher, k=2, mode="dense")
    assert len(retriever.invoke(QUERIES[0])) == 2
    assert len(retriever.invoke(QUERIES[0], k=5)) == 5
    docs = retriever.invoke(QUERIES[0], k=3, mode="m3")
    assert len(docs) == 3 and all("colbert" in d.metadata["scores"] for d in docs)
    assert len(M3Retriever(searcher=searcher).invoke(QUERIES[0])) == searcher.k
    with pytest.raises(ValueError, match="unknown search mode"):
        searcher.search(QUERIES[0], mode="bm25")


class _ThreadProbe:
    """Passes calls through to ``target`` and records the threads that made them."""

    def __init__(self, target, names):
        self._target, self._names, self.threads = target, names, set()

    def __getattr__(self, name):
        value = getattr(self._target, name)
        if name not in self._names:
            return value

        def call(*args, **kwargs):
            self.threads.add(threading.get_ident())
            return value(*args, **kwargs)

        return call


#: Methods of the sync database clients that a search or a fetch by id calls.
_SYNC_READS = {"search", "hybrid_search", "get", "query", "query_points", "retrieve"}


@pytest.mark.parametrize("mode", ["hybrid", "m3"])
def test_concurrent_ainvoke_equals_invoke_and_leaves_the_loop_free(
    store, spread, spread_corpus, mode, monkeypatch
):
    """The loop keeps ticking through 8 concurrent ``ainvoke``: the encoder runs in worker threads;
    Milvus is read with its async client only, Qdrant local mode with its sync client in worker threads."""
    enc = _ThreadProbe(spread, {"encode"})
    retriever = M3Retriever(searcher=M3Searcher(store, enc, spread_corpus[0], k=4), mode=mode)
    queries = [QUERIES[i % len(QUERIES)] + f" {i}" for i in range(8)]
    expected = [retriever.invoke(q) for q in queries]
    enc.threads.clear()
    db = _ThreadProbe(store.client, _SYNC_READS)
    monkeypatch.setattr(store, "client", db)

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(retriever.ainvoke(q) for q in queries))
        done.set()
        await tick_task
        return results, ticks, threading.get_ident()

    results, ticks, loop_thread = asyncio.run(main())
    assert ticks > 0
    assert enc.threads and loop_thread not in enc.threads
    if store.backend == "milvus":
        assert not db.threads
    else:
        assert db.threads and loop_thread not in db.threads
    for got, want in zip(results, expected, strict=True):
        assert [d.id for d in got] == [d.id for d in want]
        assert [d.metadata["score"] for d in got] == pytest.approx([d.metadata["score"] for d in want], rel=1e-4)


def test_from_config_reuses_or_opens_the_store(store, encoder, corpus, tmp_path):
    backend = store.backend
    cfg = load_config(
        overrides={
            "store": {"backend": backend, "collection": corpus[0]},
            "model": {"name": TINY_M3, "device": "cpu", "dtype": "float32"},
            "search": {"mode": "m3", "k": 3, "fusion": "weighted", "weights": [0.6, 0.4]},
        }
    )
    retriever = M3Retriever.from_config(cfg, store=store, encoder=encoder, k=2)
    assert retriever.searcher.fusion == Fusion.weighted(0.6, 0.4)
    assert retriever.searcher.mode == "m3" and retriever.searcher.store is store
    assert len(retriever.invoke(QUERIES[0])) == 2

    uri = tmp_path / ("own.db" if backend == "milvus" else "own")
    toml = tmp_path / "m3ingest.toml"
    toml.write_text(
        f'[store]\nbackend = "{backend}"\nuri = "{uri}"\ncollection = "docs"\n'
        f'[model]\nname = "{TINY_M3}"\ndevice = "cpu"\ndtype = "float32"\n'
        '[search]\nmode = "hybrid"\nk = 2\n'
    )
    with M3Searcher.from_config(str(toml)) as own:
        build(own.store, own.encoder, "docs")
        assert [r.text for r in own.search(QUERIES[0])] == [
            r.text for r in M3Searcher(store, encoder, corpus[0], k=2).search(QUERIES[0])
        ]


def test_retriever_runs_inside_a_chain(searcher):
    prompt = PromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    chain = {
        "context": M3Retriever(searcher=searcher, k=2) | RunnableLambda(
            lambda docs: "\n".join(f"[{d.metadata['source']}] {d.page_content}" for d in docs)
        ),
        "question": RunnableLambda(lambda q: q),
    } | prompt
    text = chain.invoke(QUERIES[2]).to_string()
    assert text.startswith("Context:\n[") and text.endswith(f"Question: {QUERIES[2]}")


def test_search_results_are_plain_dataclasses(searcher):
    result = searcher.search(QUERIES[0], k=1)[0]
    assert isinstance(result, SearchResult)
    assert isinstance(result.score, float) and uuid.UUID(result.id)


def test_empty_query_and_missing_collection(store, encoder, searcher):
    for mode in ("dense", "sparse", "hybrid", "m3"):
        assert len(searcher.search("", mode=mode)) == (0 if mode == "sparse" else searcher.k)
    with pytest.raises(StoreError, match=r"no collection 'absent'.*m3ingest ingest"):
        M3Searcher(store, encoder, "absent").search(QUERIES[0])


def test_retriever_from_keyword_arguments(store, encoder, corpus):
    retriever = M3Retriever(store=store, encoder=encoder, collection=corpus[0], candidates=3, k=2, mode="m3")
    assert retriever.searcher.candidates == 3 and len(retriever.invoke(QUERIES[0])) == 2
    cfg = load_config(overrides={"store": {"backend": store.backend, "collection": corpus[0]}})
    tuned = M3Retriever(config=cfg, store=store, encoder=encoder, fusion=Fusion.weighted(0.9, 0.1))
    assert tuned.searcher.fusion == Fusion.weighted(0.9, 0.1) and tuned.searcher.k == cfg.search.k
    with pytest.raises(ValueError, match="missing: collection"):
        M3Retriever(store=store, encoder=encoder)
    with pytest.raises(ValueError, match="not both"):
        M3Retriever(searcher=retriever.searcher, config=cfg)
