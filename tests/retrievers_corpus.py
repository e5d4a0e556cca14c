"""A small collection for the retriever tests, written straight through a VectorStore."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Mapping, Sequence

import numpy as np

from m3ingest.connectors import ChunkRecord, VectorStore
from m3ingest.encoder import M3Encoder, lexical_score

TINY_M3 = "tests/fixtures/tiny-m3"

#: (source, text, user metadata)
CHUNKS: list[tuple[str, str, dict]] = [
    ("guide/milvus.md", "Milvus stores dense and sparse vectors for hybrid search.", {"lang": "en"}),
    ("guide/milvus.md", "A Milvus Lite file needs no server at all.", {"lang": "en"}),
    ("guide/qdrant.md", "Qdrant fuses dense and sparse results with reciprocal rank fusion.", {"lang": "en"}),
    ("guide/qdrant.md", "Qdrant local mode keeps the collection in a folder.", {"lang": "en"}),
    ("guide/m3.md", "BGE-M3 gives dense, lexical and multi-vector ColBERT representations.", {"lang": "en"}),
    ("guide/m3.md", "The M3 paper re-ranks candidates by a weighted sum of three scores.", {"lang": "en"}),
    ("de/suche.md", "Die Suche kombiniert dichte und spärliche Vektoren.", {"lang": "de"}),
    ("de/suche.md", "Eine Sammlung enthält Abschnitte mit Metadaten.", {"lang": "de"}),
    ("fr/recherche.md", "Les bases de données vectorielles stockent des plongements.", {"lang": "fr"}),
    ("zh/search.md", "向量数据库支持混合检索。检索增强生成需要高质量的向量。", {"lang": "zh"}),
    ("misc/fox.txt", "The quick brown fox jumps over the lazy dog. The dog sleeps.", {"lang": "en"}),
    ("misc/code.txt", "emoji 🚀 and numbers 12345 and code `x = y + 1`", {"lang": "en"}),
]

QUERIES = [
    "hybrid search with dense and sparse vectors",
    "Wie kombiniert die Suche Vektoren?",
    "which database needs no server",
]


class SpreadEncoder:
    """The tiny checkpoint with its dense vectors spread apart.

    Its random weights give dense vectors that nearly coincide (cosine 1 - 1e-6), so rankings by
    them hinge on float rounding and differ between engines. This subtracts a fixed vector (the
    corpus mean) and normalises again, the same map for chunks and queries, so dense rankings are
    well separated; sparse and ColBERT vectors are the encoder's own.
    """

    def __init__(self, encoder: M3Encoder) -> None:
        self._encoder = encoder
        self._mean = encoder.encode([text for _, text, _ in CHUNKS], sparse=False).dense.mean(axis=0)

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def encode(self, texts, *args, **kwargs):
        out = self._encoder.encode(texts, *args, **kwargs)
        if out.dense is None:
            return out
        d = out.dense - self._mean
        return dataclasses.replace(out, dense=(d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32))


def build(
    store: VectorStore, encoder: M3Encoder, collection: str, colbert: bool = False
) -> list[ChunkRecord]:
    """Encode ``CHUNKS`` and upsert them into a new ``collection``; the records, with vectors."""
    texts = [text for _, text, _ in CHUNKS]
    out = encoder.encode(texts, dense=True, sparse=True, colbert=True)
    index: dict[str, int] = {}
    records = []
    for i, (source, text, meta) in enumerate(CHUNKS):
        n = index[source] = index.get(source, -1) + 1
        records.append(
            ChunkRecord(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{collection}/{source}/{n}")),
                text=text,
                source=source,
                chunk_index=n,
                start=100 * n,
                end=100 * n + len(text),
                content_hash=hashlib.sha256(text.encode()).hexdigest(),
                metadata={**meta, "headings": [source.split("/")[0]]},
                dense=out.dense[i],
                sparse=out.sparse[i],
                colbert=out.colbert[i],
            )
        )
    store.ensure_collection(collection, encoder.dim, colbert=colbert)
    store.upsert(collection, [_without_colbert(r) for r in records] if not colbert else records)
    return records


def _without_colbert(r: ChunkRecord) -> ChunkRecord:
    return ChunkRecord(**{**r.__dict__, "colbert": None})


def ranked_lists(
    records: Sequence[ChunkRecord], dense: np.ndarray, sparse: Mapping[int, float], candidates: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Brute force: the top ``candidates`` of the dense (dot) and sparse (lexical) lists, best first."""
    d = sorted(((float(np.dot(r.dense, dense)), r.id) for r in records), reverse=True)
    s = sorted(((lexical_score(sparse, r.sparse), r.id) for r in records), reverse=True)
    s = [(score, i) for score, i in s if score > 0]  # a sparse search only finds shared tokens
    return ({i: x for x, i in d[:candidates]}, {i: x for x, i in s[:candidates]})


def rrf(lists: Sequence[Mapping[str, float]], k: int) -> dict[str, float]:
    """Reciprocal rank fusion: sum over lists of 1 / (k + rank), rank from 1."""
    fused: dict[str, float] = {}
    for ranked in lists:
        for rank, i in enumerate(ranked, start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (k + rank)
    return fused


def weighted(dense: Mapping[str, float], sparse: Mapping[str, float], w: tuple[float, float]) -> dict[str, float]:
    """Weighted fusion of raw scores; a chunk missing from one list gets nothing from it."""
    return {i: w[0] * dense.get(i, 0.0) + w[1] * sparse.get(i, 0.0) for i in {*dense, *sparse}}
