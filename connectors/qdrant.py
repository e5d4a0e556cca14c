"""Qdrant (local folder, ``:memory:`` or a server by URL) behind the ``VectorStore`` interface."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from . import retry
from .calls import Call, Plan, arun, run
from .loops import PerLoop
from .base import (
    CHUNK_FIELDS,
    ChunkRecord,
    Fusion,
    Query,
    SchemaMismatchError,
    SearchHit,
    SearchMode,
    StoreError,
    VectorStore,
)
from .batching import batches_by_bytes
from .filters import to_qdrant

T = TypeVar("T")

#: Default request budget, as JSON: Qdrant's REST limit is 32 MB.
DEFAULT_BATCH_BYTES = 16 * 1024 * 1024
_TRANSIENT_STATUS = {429, 502, 503, 504}
_DENSE_DISTANCES = {models.Distance.DOT, models.Distance.COSINE}


def is_transient(exc: BaseException) -> bool:
    """Errors worth another try: connection failures, timeouts, overload and gateway errors."""
    if isinstance(exc, ResponseHandlingException) or retry.is_transient_builtin(exc):
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in _TRANSIENT_STATUS
    return False


def _sparse(vector: Mapping[int, float]) -> models.SparseVector:
    return models.SparseVector(indices=[int(i) for i in vector], values=[float(w) for w in vector.values()])


class QdrantStore(VectorStore):
    """Chunks in Qdrant collections: ``:memory:``, a local folder, or an ``http(s)://`` server URL."""

    backend = "qdrant"
    #: Points per page when listing every chunk (``ids_by_source``).
    scan_batch = 2048

    def __init__(
        self,
        uri: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_batch_bytes: int = DEFAULT_BATCH_BYTES,
        retry_policy: retry.RetryPolicy = retry.RetryPolicy(),
    ) -> None:
        self.uri = uri
        self.max_batch_bytes = max_batch_bytes
        self.retry_policy = retry_policy
        if uri == ":memory:":
            kwargs: dict[str, Any] = {"location": ":memory:"}
        elif uri.startswith(("http://", "https://")):
            kwargs = {"url": uri, "api_key": api_key, "timeout": int(timeout)}
        else:
            kwargs = {"path": str(Path(uri).expanduser())}
        self.client: QdrantClient = self._call(f"connect to {uri}", None, lambda: QdrantClient(**kwargs))
        # Local mode (a folder or :memory:) has no second client: another client cannot open the same
        # storage, so asearch / aget fall back to the sync client in a worker thread there.
        self._async_kwargs: dict[str, Any] | None = kwargs if "url" in kwargs else None
        self._async_clients: PerLoop[AsyncQdrantClient] = PerLoop(self._open_async, AsyncQdrantClient.close)

    def _call(self, operation: str, collection: str | None, fn: Callable[[], T]) -> T:
        return retry.call(
            fn,
            backend=self.backend,
            operation=operation,
            collection=collection,
            is_transient=is_transient,
            policy=self.retry_policy,
        )

    def _execute(self, call: Call) -> Any:
        return self._call(call.operation, call.collection, lambda: call.on(self.client))

    async def _open_async(self) -> AsyncQdrantClient:
        assert self._async_kwargs is not None
        return AsyncQdrantClient(**self._async_kwargs)

    async def _aexecute(self, call: Call) -> Any:
        async def attempt() -> Any:
            return await call.on(await self._async_clients.get())

        return await retry.acall(
            attempt,
            backend=self.backend,
            operation=call.operation,
            collection=call.collection,
            is_transient=is_transient,
            policy=self.retry_policy,
        )

    # --- collections -----------------------------------------------------------------------------

    def ensure_collection(self, collection: str, dim: int, colbert: bool = False) -> None:
        """Create the collection, or check that the existing one has this schema."""
        if self.has_collection(collection):
            self._check_schema(collection, dim, colbert)
            return
        vectors = {"dense": models.VectorParams(size=dim, distance=models.Distance.DOT)}
        if colbert:
            vectors["colbert"] = models.VectorParams(
                size=dim,
                distance=models.Distance.DOT,
                multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
                hnsw_config=models.HnswConfigDiff(m=0),  # only re-ranks candidates: no graph needed
            )
        self._call(
            "create collection",
            collection,
            lambda: self.client.create_collection(
                collection,
                vectors_config=vectors,
                # No IDF modifier: M3's sparse weights are learned and used as they are.
                sparse_vectors_config={"sparse": models.SparseVectorParams()},
            ),
        )
        if not self.uri.startswith(("http://", "https://")):
            return  # local mode has no payload indexes
        for key in ("source", "content_hash"):
            self._call(
                f"index payload '{key}'",
                collection,
                lambda key=key: self.client.create_payload_index(
                    collection, key, models.PayloadSchemaType.KEYWORD, wait=True
                ),
            )

    def _check_schema(self, collection: str, dim: int, colbert: bool) -> None:
        info = self._call("describe", collection, lambda: self.client.get_collection(collection))
        vectors = info.config.params.vectors
        vectors = vectors if isinstance(vectors, dict) else {}
        sparse = info.config.params.sparse_vectors or {}
        problems = []
        dense = vectors.get("dense")
        if dense is None:
            problems.append("vector 'dense' is missing")
        else:
            if dense.size != dim:
                problems.append(f"dense dimension is {dense.size}, this run needs {dim}")
            if dense.distance not in _DENSE_DISTANCES:
                problems.append(f"dense distance is {dense.distance.value}, expected Dot or Cosine")
        if "sparse" not in sparse:
            problems.append("sparse vector 'sparse' is missing")
        elif sparse["sparse"].modifier not in (None, models.Modifier.NONE):
            problems.append("sparse vector 'sparse' has an IDF modifier; M3 weights must be used as they are")
        if colbert:
            multi = vectors.get("colbert")
            if multi is None or multi.multivector_config is None:
                problems.append("multivector 'colbert' is missing")
            elif multi.size != dim:
                problems.append(f"colbert dimension is {multi.size}, this run needs {dim}")
        if problems:
            raise SchemaMismatchError(
                f"qdrant: collection '{collection}' does not match the m3ingest schema: "
                + "; ".join(problems)
                + ". Use another collection name or drop this one (m3ingest drop)."
            )

    def has_collection(self, collection: str) -> bool:
        return self._call("has collection", collection, lambda: self.client.collection_exists(collection))

    def list_collections(self) -> list[str]:
        res = self._call("list collections", None, self.client.get_collections)
        return sorted(c.name for c in res.collections)

    def _aliases(self) -> dict[str, str]:
        res = self._call("list aliases", None, self.client.get_aliases)
        return {a.alias_name: a.collection_name for a in res.aliases}

    def drop_collection(self, collection: str) -> None:
        """Drop the collection and the aliases that point at it; dropping an alias name drops the alias."""
        aliases = self._aliases()
        if collection in aliases:
            self.drop_alias(collection)
            return
        if collection not in self.list_collections():
            return
        for alias, target in aliases.items():
            if target == collection:
                self.drop_alias(alias)
        self._call("drop collection", collection, lambda: self.client.delete_collection(collection))

    # --- writes ----------------------------------------------------------------------------------

    def _point(self, r: ChunkRecord) -> models.PointStruct:
        if r.dense is None or r.sparse is None:
            raise StoreError(f"qdrant: chunk {r.id} of {r.source} has no dense or sparse vector")
        vector: dict[str, Any] = {
            "dense": np.asarray(r.dense, dtype=np.float32).tolist(),
            "sparse": _sparse(r.sparse),
        }
        if r.colbert is not None:
            vector["colbert"] = np.asarray(r.colbert, dtype=np.float32).tolist()
        payload = {
            "text": r.text,
            "source": r.source,
            "chunk_index": int(r.chunk_index),
            "start": int(r.start),
            "end": int(r.end),
            "content_hash": r.content_hash,
            "metadata": r.metadata,
        }
        return models.PointStruct(id=r.id, vector=vector, payload=payload)

    @staticmethod
    def _point_bytes(p: models.PointStruct) -> int:
        v = p.vector
        floats = len(v["dense"]) + 2 * len(v["sparse"].indices) + sum(map(len, v.get("colbert", ())))
        payload = p.payload or {}
        # JSON escapes take at most 6 bytes a character; metadata is small enough to measure.
        text = 6 * (len(payload["text"]) + len(payload["source"]))
        return 512 + 20 * floats + text + len(json.dumps(payload["metadata"]))

    def upsert(self, collection: str, records: Sequence[ChunkRecord]) -> None:
        points = [self._point(r) for r in records]
        for batch in batches_by_bytes(points, self._point_bytes, self.max_batch_bytes):
            self._call(
                f"upsert of {len(batch)} chunks",
                collection,
                lambda batch=batch: self.client.upsert(collection, batch, wait=True),
            )

    def delete(self, collection: str, ids: Iterable[str]) -> None:
        ids = list(ids)
        for i in range(0, len(ids), 10_000):
            part = ids[i : i + 10_000]
            self._call(
                f"delete of {len(part)} chunks",
                collection,
                lambda part=part: self.client.delete(
                    collection, points_selector=models.PointIdsList(points=part), wait=True
                ),
            )

    def delete_source(self, collection: str, source: str) -> None:
        selector = models.FilterSelector(filter=to_qdrant({"source": source}))
        self._call(
            f"delete of source {source!r}",
            collection,
            lambda: self.client.delete(collection, points_selector=selector, wait=True),
        )

    # --- reads -----------------------------------------------------------------------------------

    @staticmethod
    def _record(point: Any) -> ChunkRecord:
        p = point.payload or {}
        record = ChunkRecord(
            id=str(point.id),
            text=p["text"],
            source=p["source"],
            chunk_index=int(p["chunk_index"]),
            start=int(p["start"]),
            end=int(p["end"]),
            content_hash=p["content_hash"],
            metadata=dict(p.get("metadata") or {}),
        )
        vectors = point.vector
        if isinstance(vectors, dict):
            if "dense" in vectors:
                record.dense = np.asarray(vectors["dense"], dtype=np.float32)
            if "sparse" in vectors:
                sp = vectors["sparse"]
                record.sparse = {int(i): float(np.float32(w)) for i, w in zip(sp.indices, sp.values)}
            if vectors.get("colbert") is not None:
                record.colbert = np.asarray(vectors["colbert"], dtype=np.float32)
        return record

    def get(
        self, collection: str, ids: Sequence[str], with_vectors: bool = False
    ) -> list[ChunkRecord]:
        return run(self._get_plan(collection, ids, with_vectors), self._execute)

    async def aget(
        self, collection: str, ids: Sequence[str], with_vectors: bool = False
    ) -> list[ChunkRecord]:
        if self._async_kwargs is None:
            return await super().aget(collection, ids, with_vectors)
        return await arun(self._get_plan(collection, ids, with_vectors), self._aexecute)

    def _get_plan(self, collection: str, ids: Sequence[str], with_vectors: bool) -> Plan[list[ChunkRecord]]:
        ids = list(dict.fromkeys(ids))
        found: dict[str, ChunkRecord] = {}
        for i in range(0, len(ids), 1000):
            part = ids[i : i + 1000]
            points = yield Call(
                f"get of {len(part)} chunks",
                collection,
                "retrieve",
                (collection, part),
                {"with_payload": list(CHUNK_FIELDS), "with_vectors": with_vectors},
            )
            found.update((str(p.id), self._record(p)) for p in points)
        return [found[i] for i in ids if i in found]

    def count(self, collection: str) -> int:
        return self._call("count", collection, lambda: self.client.count(collection, exact=True).count)

    def ids_by_source(self, collection: str, source: str | None = None) -> dict[str, set[str]]:
        only = None if source is None else to_qdrant({"source": source})

        def scan() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            offset = None
            while True:
                points, offset = self.client.scroll(
                    collection,
                    scroll_filter=only,
                    limit=self.scan_batch,
                    offset=offset,
                    with_payload=["source"],
                    with_vectors=False,
                )
                for p in points:
                    out.setdefault(p.payload["source"], set()).add(str(p.id))
                if offset is None:
                    return out

        return self._call("list of sources", collection, scan)

    def _search(self, collection: str, query: Query) -> list[SearchHit]:
        return run(self._search_plan(collection, query), self._execute)

    async def _asearch(self, collection: str, query: Query) -> list[SearchHit]:
        if self._async_kwargs is None:
            return await super()._asearch(collection, query)
        return await arun(self._search_plan(collection, query), self._aexecute)

    def _search_plan(self, collection: str, q: Query) -> Plan[list[SearchHit]]:
        flt = to_qdrant(q.filter)
        n = q.candidates or q.k
        stage = self._first_stage(q.dense, q.sparse, q.mode, q.fusion, n, flt)
        if q.colbert is not None:
            prefetch: Any = models.Prefetch(**stage, limit=max(q.k, n))
            vectors: Any = np.asarray(q.colbert, dtype=np.float32).tolist()
            using: str | None = "colbert"
        else:
            prefetch, vectors, using = stage.get("prefetch"), stage["query"], stage.get("using")
        result = yield Call(
            f"{q.mode} search",
            collection,
            "query_points",
            (collection,),
            {
                "prefetch": prefetch,
                "query": vectors,
                "using": using,
                "limit": q.k,
                "query_filter": flt,
                "with_payload": list(CHUNK_FIELDS),
                "with_vectors": q.with_vectors,
            },
        )
        return [SearchHit(self._record(p), float(p.score)) for p in result.points]

    @staticmethod
    def _first_stage(
        dense: np.ndarray | None,
        sparse: Mapping[int, float] | None,
        mode: SearchMode,
        fusion: Fusion,
        candidates: int,
        flt: models.Filter | None,
    ) -> dict[str, Any]:
        """query_points arguments of the dense, sparse or fused search (without its limit)."""
        if mode not in ("dense", "sparse", "hybrid"):
            raise ValueError(f"search mode must be dense, sparse or hybrid, got {mode!r}")
        if mode in ("dense", "hybrid") and dense is None:
            raise ValueError(f"{mode} search needs a dense query vector")
        if mode in ("sparse", "hybrid") and sparse is None:
            raise ValueError(f"{mode} search needs a sparse query vector")
        dense_q: dict[str, Any] = {}
        if dense is not None:
            dense_q = {"query": np.asarray(dense, np.float32).tolist(), "using": "dense"}
        sparse_q = {"query": _sparse(sparse), "using": "sparse"} if sparse is not None else {}
        if mode == "dense":
            return {**dense_q, "filter": flt}
        if mode == "sparse":
            return {**sparse_q, "filter": flt}
        prefetch = [
            models.Prefetch(**dense_q, limit=candidates, filter=flt),
            models.Prefetch(**sparse_q, limit=candidates, filter=flt),
        ]
        return {"prefetch": prefetch, "query": _fusion_query(fusion), "filter": flt}


    # --- aliases ---------------------------------------------------------------------------------

    def set_alias(self, alias: str, collection: str) -> None:
        ops: list[Any] = []
        if alias in self._aliases():
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
            )
        )
        # One request: Qdrant applies the delete and the create atomically.
        self._call(f"point alias '{alias}'", collection, lambda: self.client.update_collection_aliases(ops))

    def resolve_alias(self, alias: str) -> str | None:
        return self._aliases().get(alias)

    def drop_alias(self, alias: str) -> None:
        if alias in self._aliases():
            op = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            self._call(f"drop alias '{alias}'", None, lambda: self.client.update_collection_aliases([op]))

    async def aclose(self) -> None:
        await self._async_clients.aclose()
        self.close()

    def close(self) -> None:
        self._async_clients.close()
        self.client.close()


def _fusion_query(fusion: Fusion) -> models.Query:
    if fusion.kind == "rrf":
        # Qdrant scores 1 / (k + rank - 1) with rank from 1; k + 1 gives the 1 / (k + rank) of Fusion.
        return models.RrfQuery(rrf=models.Rrf(k=fusion.k + 1))
    if fusion.kind == "dbsf":
        return models.FusionQuery(fusion=models.Fusion.DBSF)
    if fusion.kind == "weighted":
        w_dense, w_sparse = fusion.weights
        return models.FormulaQuery(
            formula=models.SumExpression(
                sum=[
                    models.MultExpression(mult=[w_dense, "$score[0]"]),
                    models.MultExpression(mult=[w_sparse, "$score[1]"]),
                ]
            ),
            defaults={"$score[0]": 0.0, "$score[1]": 0.0},  # absent from one list: it adds nothing
        )
    raise ValueError(f"unknown fusion {fusion.kind!r}; use rrf, weighted or dbsf")
