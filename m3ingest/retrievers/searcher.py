"""A framework-free searcher over an ingested collection: dense, sparse, hybrid and M3 modes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from m3ingest.config import Config, resolve_config
from m3ingest.connectors import ChunkRecord, Fusion, SearchHit, StoreError, VectorStore
from m3ingest.retrievers.batching import QueryBatcher, QueryVectors

if TYPE_CHECKING:
    from m3ingest.encoder import M3Encoder

Mode = Literal["dense", "sparse", "hybrid", "m3"]
MODES: tuple[str, ...] = get_args(Mode)

#: Payload fields copied into every result's metadata (next to the user's own metadata).
_BUILTIN_FIELDS = ("source", "chunk_index", "start", "end", "content_hash")


@dataclass
class SearchResult:
    """One retrieved chunk: its id, text, metadata and the scores that ranked it.

    ``metadata`` holds the user's metadata, ``headings`` and the built-in fields ``source``,
    ``chunk_index``, ``start``, ``end`` and ``content_hash``. ``scores`` has one entry per score
    computed (``{"hybrid": ...}``, or ``{"dense", "sparse", "colbert", "m3"}`` in the M3 mode);
    ``score`` is the one the results are ordered by.
    """

    id: str
    text: str
    metadata: dict[str, Any]
    scores: dict[str, float]
    score: float


@dataclass(frozen=True)
class _Call:
    """The settings of one search: the searcher's defaults with the per-call values applied."""

    k: int
    mode: str
    filter: Mapping[str, Any] | None


def _result(record: ChunkRecord, scores: dict[str, float], key: str) -> SearchResult:
    metadata = dict(record.metadata or {})
    metadata.update({name: getattr(record, name) for name in _BUILTIN_FIELDS})
    return SearchResult(record.id, record.text, metadata, scores, scores[key])


def _union(lists: Sequence[Sequence[SearchHit]]) -> list[str]:
    """Ids of the hits of all lists, in order of first appearance."""
    return list(dict.fromkeys(h.id for hits in lists for h in hits))


def combine_filters(
    default: Mapping[str, Any] | None, extra: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """A filter that holds where both hold (either may be None)."""
    if not default:
        return extra or None
    if not extra:
        return default
    return {"$and": [dict(default), dict(extra)]}


class M3Searcher:
    """Searches one collection of a ``VectorStore`` with queries encoded by BGE-M3.

    Modes: ``dense``, ``sparse``, ``hybrid`` (fused by the database with ``fusion``: RRF or
    weighted) and ``m3``: the top ``candidates`` of the dense and of the sparse search, re-ranked
    by ``m3_weights`` · (dense, lexical, ColBERT) scores computed from the vectors (the paper's
    hybrid retrieval). ColBERT vectors come from the store when it holds them, otherwise the
    candidates' texts are re-encoded.

    A ``filter`` given at construction scopes every search; a per-call filter narrows it further.
    ``search`` may be called from many threads at once; concurrent queries share encoder batches.
    """

    def __init__(
        self,
        store: VectorStore,
        encoder: M3Encoder,
        collection: str,
        mode: Mode = "hybrid",
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        fusion: Fusion = Fusion(),
        candidates: int = 100,
        m3_weights: tuple[float, float, float] = (0.4, 0.2, 0.4),
        max_length: int = 8192,
        owns_store: bool = False,
    ) -> None:
        self.store = store
        self.encoder = encoder
        self.collection = collection
        self.mode = self._check_mode(mode)
        self.k = self._check_k(k)
        self.filter = dict(filter) if filter else None
        self.fusion = fusion
        self.candidates = self._check_k(candidates, "candidates")
        self.m3_weights = tuple(m3_weights)
        self.max_length = max_length
        self._owns_store = owns_store
        self._batcher = QueryBatcher(encoder, max_length=max_length)

    @classmethod
    def from_config(
        cls,
        config: Config | str | os.PathLike[str] | None = None,
        encoder: M3Encoder | None = None,
        store: VectorStore | None = None,
        **settings: Any,
    ) -> M3Searcher:
        """A searcher set up by a configuration (a ``Config`` or a TOML file, as ingestion uses).

        The ``[store]`` section picks the database and collection (or alias), ``[model]`` the
        checkpoint that encodes queries, ``[search]`` the defaults, which ``settings`` (the
        keyword arguments of ``M3Searcher``, e.g. ``candidates=50``) override. ``encoder`` and
        ``store`` reuse objects already open; a store opened here is closed by ``close()``.
        """
        config = resolve_config(config)
        owns_store = store is None
        if store is None:
            from m3ingest.connectors import store_from_config

            store = store_from_config(config.store)
        if encoder is None:
            from m3ingest.encoder import M3Encoder

            try:
                encoder = M3Encoder.from_config(config.model)
            except BaseException:
                if owns_store:
                    store.close()
                raise
        search = config.search
        defaults: dict[str, Any] = {
            "collection": config.store.collection,
            "mode": search.mode,
            "k": search.k,
            "filter": search.filter,
            "fusion": Fusion(search.fusion, k=search.rrf_k, weights=search.weights),
            "candidates": search.candidates,
            "m3_weights": tuple(search.m3_weights),
            "max_length": config.model.max_length,
        }
        return cls(store, encoder, **{**defaults, **settings}, owns_store=owns_store)

    def search(
        self,
        query: str,
        k: int | None = None,
        mode: Mode | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> list[SearchResult]:
        """The ``k`` best chunks for ``query``, best first."""
        call = self._call(k, mode, filter)
        q = self._encode(query, call.mode)
        if call.mode != "m3":
            return self._fused(q, call)
        return self._rerank(q, self._candidates(q, call), call.k)

    async def asearch(
        self,
        query: str,
        k: int | None = None,
        mode: Mode | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> list[SearchResult]:
        """``search`` without blocking the event loop.

        The query is encoded in a worker thread (batched with concurrent queries), the store is
        read through its async methods (the database's async client where the store has one),
        and the ``m3`` re-ranking runs in a worker thread.
        """
        call = self._call(k, mode, filter)
        q = await asyncio.to_thread(self._encode, query, call.mode)
        if call.mode != "m3":
            return self._fused_results(await self._astore_search(**self._fused_args(q, call)), call)
        candidates = await self._acandidates(q, call)
        return await asyncio.to_thread(self._rerank, q, candidates, call.k)

    def close(self) -> None:
        """Close the store when this searcher opened it."""
        if self._owns_store:
            self.store.close()

    async def aclose(self) -> None:
        """``close`` for async apps: also closes the store's async client of the running loop."""
        if self._owns_store:
            await self.store.aclose()

    def __enter__(self) -> M3Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check_mode(mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
        return mode

    @staticmethod
    def _check_k(k: int, name: str = "k") -> int:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"{name} must be a positive integer, got {k!r}")
        return k

    def _call(self, k: int | None, mode: str | None, filter: Mapping[str, Any] | None) -> _Call:
        return _Call(
            k=self.k if k is None else self._check_k(k),
            mode=self.mode if mode is None else self._check_mode(mode),
            filter=combine_filters(self.filter, filter),
        )

    def _encode(self, query: str, mode: str) -> QueryVectors:
        return self._batcher.encode(query, colbert=mode == "m3")

    def _explain(self, error: StoreError) -> StoreError:
        """The store's error, or a clearer one when the collection does not exist."""
        try:
            exists = self.store.has_collection(self.collection)
        except StoreError:
            return error
        if exists:
            return error
        return StoreError(
            f"{self.store.label}: there is no collection '{self.collection}' to search; ingest "
            "documents into it first (m3ingest ingest PATH) or set store.collection to an existing one"
        )

    def _store_search(self, **kwargs: Any) -> list[SearchHit]:
        try:
            return self.store.search(self.collection, **kwargs)
        except StoreError as e:
            raise self._explain(e) from e

    async def _astore_search(self, **kwargs: Any) -> list[SearchHit]:
        try:
            return await self.store.asearch(self.collection, **kwargs)
        except StoreError as e:
            raise await asyncio.to_thread(self._explain, e) from e

    def _fused_args(self, q: QueryVectors, call: _Call) -> dict[str, Any]:
        return {
            "dense": q.dense if call.mode != "sparse" else None,
            "sparse": q.sparse if call.mode != "dense" else None,
            "mode": call.mode,
            "k": call.k,
            "filter": call.filter,
            "fusion": self.fusion,
            "candidates": max(self.candidates, call.k) if call.mode == "hybrid" else None,
        }

    @staticmethod
    def _fused_results(hits: Sequence[SearchHit], call: _Call) -> list[SearchResult]:
        return [_result(h.record, {call.mode: float(h.score)}, call.mode) for h in hits]

    def _fused(self, q: QueryVectors, call: _Call) -> list[SearchResult]:
        return self._fused_results(self._store_search(**self._fused_args(q, call)), call)

    def _candidate_args(self, q: QueryVectors, call: _Call) -> list[dict[str, Any]]:
        """Arguments of the dense and of the sparse search for the ``m3`` mode's candidates."""
        n = max(self.candidates, call.k)
        return [
            {"dense": q.dense, "mode": "dense", "k": n, "filter": call.filter},
            {"sparse": q.sparse, "mode": "sparse", "k": n, "filter": call.filter},
        ]

    def _candidates(self, q: QueryVectors, call: _Call) -> list[ChunkRecord]:
        """The union of the dense and sparse top candidates, fetched with their vectors."""
        lists = [self._store_search(**args) for args in self._candidate_args(q, call)]
        ids = _union(lists)
        if not ids:
            return []
        return self._with_colbert(self.store.get(self.collection, ids, with_vectors=True))

    async def _acandidates(self, q: QueryVectors, call: _Call) -> list[ChunkRecord]:
        """``_candidates`` through the store's async methods, the two searches at once."""
        searches = (self._astore_search(**args) for args in self._candidate_args(q, call))
        ids = _union(await asyncio.gather(*searches))
        if not ids:
            return []
        records = await self.store.aget(self.collection, ids, with_vectors=True)
        if all(r.colbert is not None for r in records):
            return records
        return await asyncio.to_thread(self._with_colbert, records)

    def _with_colbert(self, records: list[ChunkRecord]) -> list[ChunkRecord]:
        """``records``, with ColBERT vectors encoded from the text where the store held none."""
        missing = [r for r in records if r.colbert is None]
        if missing:
            out = self.encoder.encode(
                [r.text for r in missing],
                dense=False,
                sparse=False,
                colbert=True,
                max_length=self.max_length,
            )
            assert out.colbert is not None  # asked for, so encode filled them
            for record, vectors in zip(missing, out.colbert, strict=True):
                record.colbert = vectors
        return records

    def _rerank(self, q: QueryVectors, records: Sequence[ChunkRecord], k: int) -> list[SearchResult]:
        from m3ingest.encoder import colbert_score, dense_score, lexical_score, m3_score

        assert q.colbert is not None  # _encode asks for ColBERT vectors in m3 mode
        scored = []
        for record in records:
            if record.dense is None or record.colbert is None:
                raise StoreError(
                    f"{self.store.label}: chunk {record.id} of {record.source} came back without its dense "
                    "or ColBERT vectors, which m3 re-ranking needs"
                )
            scores = {
                "dense": dense_score(q.dense, record.dense),
                "sparse": lexical_score(q.sparse, record.sparse or {}),
                "colbert": colbert_score(q.colbert, record.colbert),
            }
            scores["m3"] = m3_score(
                scores["dense"], scores["sparse"], scores["colbert"], weights=self.m3_weights
            )
            scored.append(_result(record, {n: float(s) for n, s in scores.items()}, "m3"))
        scored.sort(key=lambda r: r.score, reverse=True)
        return scored[:k]

