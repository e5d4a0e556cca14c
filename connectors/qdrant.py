"""Qdrant (local folder, ``:memory:`` or a server by URL) behind the ``VectorStore`` interface."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from . import retry
from .base import CHUNK_FIELDS, ChunkRecord, Fusion, Query, SearchHit
from .calls import Call, Plan
from .client import ClientStore
from .filters import to_qdrant

#: Default request budget, as JSON: Qdrant's REST limit is 32 MB.
DEFAULT_BATCH_BYTES = 16 * 1024 * 1024
_TRANSIENT_STATUS = {429, 502, 503, 504}
_DENSE_DISTANCES = {models.Distance.DOT, models.Distance.COSINE}


def _sparse(vector: Mapping[int, float]) -> models.SparseVector:
    return models.SparseVector(indices=[int(i) for i in vector], values=[float(w) for w in vector.values()])


class QdrantStore(ClientStore[QdrantClient, AsyncQdrantClient]):
    """Chunks in Qdrant collections: ``:memory:``, a local folder, or an ``http(s)://`` server URL
    with ``api_key``; ``options`` as in ``ClientStore``."""

    backend = "qdrant"
    embedded_name = "Qdrant local folder"
    max_batch_bytes = DEFAULT_BATCH_BYTES

    def __init__(self, uri: str, *, api_key: str | None = None, **options: Any) -> None:
        self._api_key = api_key
        super().__init__(uri, **options)
        # Local mode (a folder or :memory:) has no second client: another client cannot open the same
        # storage, so asearch / aget run the sync client in a worker thread there.
        self._async_kwargs: dict[str, Any] | None = (
            self._client_kwargs() if self.location.kind == "server" else None
        )

    @staticmethod
    def is_transient(exc: BaseException) -> bool:
        """Errors worth another try: connection failures, timeouts, overload and gateway errors."""
        if isinstance(exc, ResponseHandlingException) or retry.is_transient_builtin(exc):
            return True
        if isinstance(exc, UnexpectedResponse):
            return exc.status_code in _TRANSIENT_STATUS
        return False

    def _client_kwargs(self) -> dict[str, Any]:
        if self.location.kind == "memory":
            return {"location": ":memory:"}
        if self.location.kind == "server":
            return {"url": self.uri, "api_key": self._api_key, "timeout": int(self.timeout)}
        return {"path": str(self.location.path)}

    def _connect(self) -> QdrantClient:
        try:
            return QdrantClient(**self._client_kwargs())
        except RuntimeError as e:
            if self.location.path is None or "already accessed" not in str(e):
                raise
            raise self._in_use(self.location.path / ".lock") from e

    async def _open_async(self) -> AsyncQdrantClient:
        assert self._async_kwargs is not None
        return AsyncQdrantClient(**self._async_kwargs)

    async def _close_async(self, client: AsyncQdrantClient) -> None:
        await client.close()

    def _has_async_client(self) -> bool:
        return self._async_kwargs is not None

    # --- collections -----------------------------------------------------------------------------

    def _create_collection(self, collection: str, dim: int, colbert: bool) -> None:
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
        if self.location.kind != "server":
            return  # local mode has no payload indexes
        for key in ("source", "content_hash"):
            args = (collection, key, models.PayloadSchemaType.KEYWORD)
            self._execute(Call(f"index payload '{key}'", collection, "create_payload_index", args, {"wait": True}))

    def _schema_problems(self, collection: str, dim: int, colbert: bool) -> list[str]:
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
        return problems

    def has_collection(self, collection: str) -> bool:
        return self._call("has collection", collection, lambda: self.client.collection_exists(collection))

    def list_collections(self) -> list[str]:
        res = self._call("list collections", None, self.client.get_collections)
        return sorted(c.name for c in res.collections)

    def _aliases(self) -> dict[str, str]:
        res = self._call("list aliases", None, self.client.get_aliases)
        return {a.alias_name: a.collection_name for a in res.aliases}

    def _aliases_of(self, collection: str) -> list[str]:
        return [alias for alias, target in self._aliases().items() if target == collection]

    def _drop_collection_call(self, collection: str) -> Call:
        return Call("drop collection", collection, "delete_collection", (collection,))

    # --- writes ----------------------------------------------------------------------------------

    def _rows(self, collection: str, records: Sequence[ChunkRecord]) -> list[models.PointStruct]:
        return [self._point(r) for r in records]

    def _point(self, r: ChunkRecord) -> models.PointStruct:
        if r.dense is None or r.sparse is None:
            raise self._fail(f"chunk {r.id} of {r.source} has no dense or sparse vector")
        vector: dict[str, Any] = {
            "dense": np.asarray(r.dense, dtype=np.float32).tolist(),
            "sparse": _sparse(r.sparse),
        }
        if r.colbert is not None:
            vector["colbert"] = np.asarray(r.colbert, dtype=np.float32).tolist()
        return models.PointStruct(id=r.id, vector=vector, payload=r.payload())

    @staticmethod
    def _row_bytes(p: models.PointStruct) -> int:
        assert isinstance(p.vector, dict)  # _point always builds named vectors
        v: dict[str, Any] = p.vector
        floats = len(v["dense"]) + 2 * len(v["sparse"].indices) + sum(map(len, v.get("colbert", ())))
        payload = p.payload or {}
        # JSON escapes take at most 6 bytes a character; metadata is small enough to measure.
        text = 6 * (len(payload["text"]) + len(payload["source"]))
        return 512 + 20 * floats + text + len(json.dumps(payload["metadata"]))

    def _write_options(self) -> dict[str, Any]:
        return {"wait": True}

    def _ids_selector(self, ids: list[str]) -> dict[str, Any]:
        points: list[models.ExtendedPointId] = list(ids)
        return {"points_selector": models.PointIdsList(points=points)}

    def _source_selector(self, source: str) -> dict[str, Any]:
        flt = to_qdrant({"source": source})
        assert flt is not None  # None only for a filter that matches everything, never for an equality
        return {"points_selector": models.FilterSelector(filter=flt)}

    # --- reads -----------------------------------------------------------------------------------

    @staticmethod
    def _record(point: Any) -> ChunkRecord:
        record = ChunkRecord.from_payload(str(point.id), point.payload or {})
        vectors = point.vector
        if isinstance(vectors, dict):
            if "dense" in vectors:
                record.dense = np.asarray(vectors["dense"], dtype=np.float32)
            if "sparse" in vectors:
                sp = vectors["sparse"]
                record.sparse = {int(i): float(np.float32(w)) for i, w in zip(sp.indices, sp.values, strict=True)}
            if vectors.get("colbert") is not None:
                record.colbert = np.asarray(vectors["colbert"], dtype=np.float32)
        return record

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

    def _count_plan(self, collection: str) -> Plan[int]:
        res = yield Call("count", collection, "count", (collection,), {"exact": True})
        return res.count

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
                    assert p.payload is not None  # asked for with with_payload
                    out.setdefault(p.payload["source"], set()).add(str(p.id))
                if offset is None:
                    return out

        return self._call("list of sources", collection, scan)

    def _search_plan(self, collection: str, q: Query) -> Plan[list[SearchHit]]:
        flt = to_qdrant(q.filter)
        n = q.candidates or q.k
        stage = _first_stage(q, n, flt)
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

    def _drop_alias_call(self, alias: str) -> Call:
        op = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
        return Call(f"drop alias '{alias}'", None, "update_collection_aliases", ([op],))


def _first_stage(q: Query, candidates: int, flt: models.Filter | None) -> dict[str, Any]:
    """query_points arguments of a checked query's dense, sparse or fused search (without its limit)."""
    dense: dict[str, Any] = {}
    if q.dense is not None:
        dense = {"query": np.asarray(q.dense, np.float32).tolist(), "using": "dense"}
    sparse: dict[str, Any] = {"query": _sparse(q.sparse), "using": "sparse"} if q.sparse is not None else {}
    if q.mode == "dense":
        return {**dense, "filter": flt}
    if q.mode == "sparse":
        return {**sparse, "filter": flt}
    prefetch = [
        models.Prefetch(**dense, limit=candidates, filter=flt),
        models.Prefetch(**sparse, limit=candidates, filter=flt),
    ]
    return {"prefetch": prefetch, "query": _fusion_query(q.fusion), "filter": flt}


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
