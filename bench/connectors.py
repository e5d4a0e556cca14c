"""Write throughput through the m3ingest connectors vs bare pymilvus / qdrant-client inserts.

    python bench/connectors.py                      # both backends, embedded, 2000 rows of dim 1024
    python bench/connectors.py --backend milvus --rows 10000 --uri http://localhost:19530

Both sides write the same rows (dense float32 vector, sparse weights, ~1.5 kB of text, metadata)
into identical fresh collections; the bare side converts numpy to lists and calls the client's
upsert in ``--bare-batch``-row batches (512 by default), the connector side calls
``VectorStore.upsert`` with ``ChunkRecord``s.
Runs alternate and the median of ``--repeat`` runs is reported; ratio = connector / bare rows/s.
The CPU seconds of this process (client side; Milvus Lite's engine is another process, Qdrant's
local engine is this one) show the connector's own cost apart from a noisy machine's wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from qdrant_client import models

from m3ingest.connectors import ChunkRecord, VectorStore, open_store


def make_records(n: int, dim: int, seed: int = 0) -> list[ChunkRecord]:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    words = "the quick brown fox jumps over a lazy dog while hybrid search ranks chunks".split()
    out = []
    for i in range(n):
        tokens = rng.choice(250_000, 120, replace=False)
        text = " ".join(rng.choice(words, 260))
        out.append(ChunkRecord(
            id=str(uuid.uuid4()), text=text, source=f"docs/file{i // 20}.md", chunk_index=i % 20,
            start=0, end=len(text), content_hash=f"{i:064x}", metadata={"lang": "en", "headings": ["A", "B"]},
            dense=dense[i], sparse={int(t): float(w) for t, w in zip(tokens, rng.random(120), strict=True)},
        ))
    return out


def bare_milvus(store: VectorStore, collection: str, records: list[ChunkRecord], batch: int) -> None:
    rows = [
        {
            "id": r.id, "text": r.text, "text_more": [], "source": r.source, "chunk_index": r.chunk_index,
            "start": r.start, "end": r.end, "content_hash": r.content_hash, "metadata": r.metadata,
            "dense": r.dense.tolist(), "sparse": r.sparse,
        }
        for r in records
    ]
    for i in range(0, len(rows), batch):
        store.client.upsert(collection, rows[i : i + batch])  # type: ignore[attr-defined]


def bare_qdrant(store: VectorStore, collection: str, records: list[ChunkRecord], batch: int) -> None:
    points = [
        models.PointStruct(
            id=r.id,
            vector={
                "dense": r.dense.tolist(),
                "sparse": models.SparseVector(indices=list(r.sparse), values=list(r.sparse.values())),
            },
            payload={
                "text": r.text, "source": r.source, "chunk_index": r.chunk_index, "start": r.start,
                "end": r.end, "content_hash": r.content_hash, "metadata": r.metadata,
            },
        )
        for r in records
    ]
    for i in range(0, len(points), batch):
        store.client.upsert(collection, points[i : i + batch], wait=True)  # type: ignore[attr-defined]


def timed(
    store: VectorStore, dim: int, records: list[ChunkRecord], write: Callable[[str], None]
) -> tuple[float, float]:
    """Rows per second of one write into a fresh collection, and this process's CPU seconds for it."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    store.ensure_collection(name, dim)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        write(name)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert store.count(name) == len(records), "not every row was written"
    finally:
        store.drop_collection(name)
    return len(records) / seconds, cpu


def bench(
    backend: str, uri: str, rows: int, dim: int, repeat: int, bare_batch: int
) -> dict[str, float | str | int]:
    records = make_records(rows, dim)
    bare = bare_milvus if backend == "milvus" else bare_qdrant
    with open_store(backend, uri) as store:
        timed(store, dim, records[: min(200, rows)], lambda c: store.upsert(c, records[:200]))  # warm-up
        ours, theirs = [], []
        for _ in range(repeat):
            theirs.append(timed(store, dim, records, lambda c: bare(store, c, records, bare_batch)))
            ours.append(timed(store, dim, records, lambda c: store.upsert(c, records)))
    connector, client = (statistics.median(r for r, _ in runs) for runs in (ours, theirs))
    cpu_ours, cpu_theirs = (statistics.median(c for _, c in runs) for runs in (ours, theirs))
    return {
        "backend": backend,
        "rows": rows,
        "dim": dim,
        "bare_batch": bare_batch,
        "connector_rows_per_s": round(connector, 1),
        "bare_rows_per_s": round(client, 1),
        "ratio": round(connector / client, 3),
        "overhead_pct": round(100 * (1 - connector / client), 1),
        "connector_client_cpu_s": round(cpu_ours, 3),
        "bare_client_cpu_s": round(cpu_theirs, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["milvus", "qdrant", "both"], default="both")
    parser.add_argument("--uri", help="store URI (default: an embedded store in a temporary folder)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bare-batch", type=int, default=512, help="rows per bare client request")
    args = parser.parse_args()
    backends = ["milvus", "qdrant"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            uri = args.uri or str(Path(tmp) / ("bench.db" if backend == "milvus" else "qdrant"))
            print(json.dumps(bench(backend, uri, args.rows, args.dim, args.repeat, args.bare_batch)), flush=True)


if __name__ == "__main__":
    main()
