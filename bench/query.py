"""Query latency (p50 / p95 per mode) and async throughput of M3Searcher on embedded stores.

Builds a collection of ``--chunks`` synthetic chunks (word salad drawn from a Zipf-weighted
vocabulary, encoded by the model, so vectors and lexical weights look like real ones) in Milvus
Lite and in Qdrant local mode, then times ``--queries`` sequential searches per mode and the
queries/s of ``--callers`` concurrent ``asearch`` callers.

    python bench/query.py                       # tiny checkpoint, 10,000 chunks, both stores
    python bench/query.py --model BAAI/bge-m3 --backends milvus --json bench/results/q.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from m3ingest.connectors import ChunkRecord, open_store
from m3ingest.encoder import M3Encoder
from m3ingest.retrievers import M3Searcher

WORDS = (
    "vector database hybrid search dense sparse lexical token chunk document index collection query "
    "retrieval ranking fusion score weight model encoder embedding layer attention batch memory disk "
    "server client file folder source text page section heading paragraph table figure result answer "
    "question context prompt language english german french chinese milvus qdrant colbert paper method "
    "experiment dataset benchmark latency throughput cost time cache update delete insert schedule job "
    "cluster node shard replica backup restore alias version schema field filter metadata tag owner "
    "the a of and to in is for on with as by at from that this it be are was or an not which"
).split()


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` chunks of 20-60 words, word frequencies following a Zipf law like real text."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    order = rng.permutation(len(WORDS))
    return [
        " ".join(WORDS[order[i]] for i in rng.choice(len(WORDS), size=rng.integers(20, 61), p=p))
        for _ in range(n)
    ]


def records(texts: list[str], encoder: M3Encoder, colbert: bool) -> list[ChunkRecord]:
    """The chunks with their vectors, encoded in batches."""
    out = encoder.encode(texts, dense=True, sparse=True, colbert=colbert, max_length=512)
    return [
        ChunkRecord(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{i}")),
            text=t,
            source=f"doc{i // 20:04d}.txt",
            chunk_index=i % 20,
            start=0,
            end=len(t),
            content_hash=hashlib.sha256(t.encode()).hexdigest(),
            metadata={"lang": "en"},
            dense=out.dense[i],
            sparse=out.sparse[i],
            colbert=out.colbert[i] if colbert else None,
        )
        for i, t in enumerate(texts)
    ]


def latency(searcher: M3Searcher, queries: list[str], mode: str, k: int) -> dict[str, float]:
    """p50 / p95 of sequential searches, in milliseconds (after a few warm-up queries)."""
    for q in queries[:5]:
        searcher.search(q, mode=mode, k=k)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        searcher.search(q, mode=mode, k=k)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


async def throughput(searcher: M3Searcher, queries: list[str], mode: str, k: int, callers: int) -> float:
    """Queries per second of ``callers`` concurrent ``asearch`` loops sharing ``queries``."""
    pending = list(queries)

    async def caller() -> None:
        while pending:
            await searcher.asearch(pending.pop(), mode=mode, k=k)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return len(queries) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tests/fixtures/tiny-m3", help="checkpoint that encodes chunks and queries")
    ap.add_argument("--device", default=None)
    ap.add_argument("--backends", default="milvus,qdrant")
    ap.add_argument("--modes", default="dense,sparse,hybrid,m3")
    ap.add_argument("--chunks", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=40, help="timed queries per mode")
    ap.add_argument("--callers", type=int, default=8, help="concurrent asearch callers")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=100, help="per list, for hybrid and m3")
    ap.add_argument("--colbert", action="store_true", help="store ColBERT vectors (m3 mode reads them)")
    ap.add_argument("--no-flush", action="store_true", help="search Milvus' growing segments, unindexed")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    encoder = M3Encoder(args.model, device=args.device)
    t0 = time.perf_counter()
    chunks = records(synthetic_texts(args.chunks), encoder, args.colbert)
    print(f"encoded {len(chunks)} chunks in {time.perf_counter() - t0:.1f} s ({encoder.device}, {encoder.dtype})")
    queries = [" ".join(t.split()[:8]) for t in synthetic_texts(args.queries, seed=1)]
    modes = args.modes.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            uri = str(Path(tmp) / ("bench.db" if backend == "milvus" else "qdrant"))
            with open_store(backend, uri) as store:
                t0 = time.perf_counter()
                store.ensure_collection("bench", encoder.dim, colbert=args.colbert)
                store.upsert("bench", chunks)
                if not args.no_flush:
                    # As an ingest run ends: Milvus searches unflushed rows by brute force.
                    store.flush("bench")
                print(f"{backend}: wrote {store.count('bench')} chunks in {time.perf_counter() - t0:.1f} s")
                searcher = M3Searcher(store, encoder, "bench", candidates=args.candidates)
                for mode in modes:
                    row = {"backend": backend, "mode": mode, **latency(searcher, queries, mode, args.k)}
                    row["qps"] = asyncio.run(throughput(searcher, queries, mode, args.k, args.callers))
                    results.append(row)
                    print(
                        f"{backend:7} {mode:7} p50 {row['p50_ms']:8.1f} ms  p95 {row['p95_ms']:8.1f} ms  "
                        f"{args.callers} async callers {row['qps']:7.1f} queries/s"
                    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"settings": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
