"""Milvus (a Milvus Lite file or a server by URI) behind the ``VectorStore`` interface."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from pymilvus import (
    AnnSearchRequest,
    AsyncMilvusClient,
    DataType,
    MilvusClient,
    RRFRanker,
    WeightedRanker,
)
from pymilvus.client.types import LoadState
from pymilvus.exceptions import ConnectionConfigException, MilvusException, MilvusUnavailableException

from . import logs, retry
from .base import ChunkRecord, Fusion, Query, SearchHit, StoreError
from .calls import Call, Plan, run
from .client import ClientStore
from .filters import milvus_string, to_milvus

logs.apply()  # importing pymilvus set its loggers up again

#: Milvus' largest VARCHAR, in bytes. Longer text continues in ``text_more`` (see docs/connectors.md).
VARCHAR_MAX = 65535
#: Most overflow parts of one chunk's text: 256 x 64 KiB = 16 MiB of text per chunk.
TEXT_PARTS_MAX = 256
#: Most parts of one chunk's base64 ColBERT matrix (Milvus' largest ARRAY capacity).
COLBERT_PARTS_MAX = 4096
#: Milvus stores no empty sparse vector: a chunk without lexical weights gets this one token instead.
#: No tokenizer has 2**32 - 2 tokens, so no query ever matches it; reads drop it again.
EMPTY_SPARSE_TOKEN = 2**32 - 2
#: Default request budget: half of Milvus' 64 MB gRPC limit leaves room for protobuf framing.
DEFAULT_BATCH_BYTES = 32 * 1024 * 1024

SCALAR_FIELDS = ["text", "text_more", "source", "chunk_index", "start", "end", "content_hash", "metadata"]
_INT64 = DataType.INT64
_VARCHAR = DataType.VARCHAR
#: field -> (type, element type of an ARRAY), as the collection must have them.
_EXPECTED: dict[str, tuple[DataType, DataType | None]] = {
    "id": (_VARCHAR, None),
    "text": (_VARCHAR, None),
    "text_more": (DataType.ARRAY, _VARCHAR),
    "source": (_VARCHAR, None),
    "chunk_index": (_INT64, None),
    "start": (_INT64, None),
    "end": (_INT64, None),
    "content_hash": (_VARCHAR, None),
    "metadata": (DataType.JSON, None),
    "dense": (DataType.FLOAT_VECTOR, None),
    "sparse": (DataType.SPARSE_FLOAT_VECTOR, None),
}
_COLBERT = ("colbert", (DataType.ARRAY, _VARCHAR))


def split_utf8(text: str, limit: int = VARCHAR_MAX) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` UTF-8 bytes, never inside a character."""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return [text]
    data = text.encode("utf-8")
    parts: list[str] = []
    pos = 0
    while pos < len(data):
        end = min(pos + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # continuation byte: back off
            end -= 1
        parts.append(data[pos:end].decode("utf-8"))
        pos = end
    return parts or [""]


def encode_colbert(matrix: np.ndarray) -> list[str]:
    """A ColBERT matrix as base64 text parts (little-endian float32), exact on the way back."""
    raw = np.ascontiguousarray(matrix, dtype="<f4").tobytes()
    text = base64.b64encode(raw).decode("ascii")
    return [text[i : i + VARCHAR_MAX] for i in range(0, len(text), VARCHAR_MAX)]


def decode_colbert(parts: Sequence[str], dim: int) -> np.ndarray | None:
    """The matrix ``encode_colbert`` stored, or None when none was."""
    if not parts:
        return None
    raw = base64.b64decode("".join(parts))
    return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(-1, dim)


def max_sim(query: np.ndarray, doc: np.ndarray) -> float:
    """Late-interaction score: for each query vector its best dot product with a document vector, summed."""
    return float((np.asarray(query, np.float32) @ np.asarray(doc, np.float32).T).max(axis=1).sum())


class _OpenFailures(logging.Filter):
    """Milvus Lite's own report (a logged traceback) of a file it could not open, caught while a
    store opens one: the store raises an error that says why instead."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    @contextmanager
    def catching(self) -> Iterator[list[BaseException]]:
        """The exceptions Milvus Lite reports in this thread meanwhile (and does not print).

        Its logger is let down to ERROR meanwhile: quiet client logs (``quiet_client_logs``) would
        otherwise keep the report from ever being made.
        """
        caught: list[BaseException] = []
        self._local.caught = caught
        logger = logging.getLogger(_SERVER_LOGGER)
        level = logger.level
        if logger.getEffectiveLevel() > logging.ERROR:
            logger.setLevel(logging.ERROR)
        try:
            yield caught
        finally:
            self._local.caught = None
            logger.setLevel(level)

    def filter(self, record: logging.LogRecord) -> bool:
        caught = getattr(self._local, "caught", None)
        if caught is None:
            return True
        if record.exc_info and record.exc_info[1] is not None:
            caught.append(record.exc_info[1])
        return False


_SERVER_LOGGER = "milvus_lite.server_manager"
_OPEN_FAILURES = _OpenFailures()
logging.getLogger(_SERVER_LOGGER).addFilter(_OPEN_FAILURES)


class MilvusStore(ClientStore[MilvusClient, AsyncMilvusClient]):
    """Chunks in Milvus collections: a Milvus Lite file path (``./m3ingest.db``) or a server URI
    (``http(s)://host:19530``), with ``token`` or ``user`` / ``password`` for a server that asks.

    ``options`` are ``ClientStore``'s: ``timeout``, ``max_batch_bytes``, ``retry_policy``, ``create``.
    """

    backend = "milvus"
    embedded_name = "Milvus Lite file"
    max_batch_bytes = DEFAULT_BATCH_BYTES

    def __init__(
        self,
        uri: str,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        **options: Any,
    ) -> None:
        self._credentials: dict[str, Any] = {}
        if token:
            self._credentials["token"] = token
        if user:
            self._credentials.update(user=user, password=password or "")
        #: Collections (or aliases) seen loaded: Milvus serves only loaded ones, and a Milvus Lite
        #: file opened again starts with every collection released.
        self._loaded: set[str] = set()
        super().__init__(uri, **options)

    @staticmethod
    def is_transient(exc: BaseException) -> bool:
        """Errors worth another try: the server is unreachable, restarting or rate limiting."""
        if isinstance(exc, MilvusUnavailableException) or retry.is_transient_builtin(exc):
            return True
        if isinstance(exc, MilvusException):
            text = str(exc).lower()
            return any(s in text for s in ("unavailable", "connection refused", "rate limit", "deadline"))
        return False

    # --- connecting ------------------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        path = self.location.path
        return {"uri": str(path) if path else self.uri, "timeout": self.timeout, **self._credentials}

    def _connect(self) -> MilvusClient:
        path = self.location.path
        if path is None:
            return MilvusClient(**self._client_kwargs())
        path.parent.mkdir(parents=True, exist_ok=True)
        with _OPEN_FAILURES.catching() as caught:
            try:
                return MilvusClient(**self._client_kwargs())
            except ConnectionConfigException:
                if not caught:
                    raise
        from milvus_lite.exceptions import DataDirLockedError

        if any(isinstance(e, DataDirLockedError) for e in caught):
            raise self._in_use(path / "LOCK")
        raise self._fail(f"Milvus Lite could not open the file: {caught[-1]}") from caught[-1]

    async def _open_async(self) -> AsyncMilvusClient:
        # dedicated: a connection of this loop's own, never one pymilvus kept for an earlier loop
        client = AsyncMilvusClient(**self._client_kwargs(), dedicated=True)
        await client.__aenter__()  # connects once here, not in each of the first concurrent calls
        return client

    async def _close_async(self, client: AsyncMilvusClient) -> None:
        await client.close()

    def _loaded_call(self, call: Call) -> Plan[Any]:
        """``call``, a read, made on a loaded collection: loaded first the first time this store
        reads it, and again if it was released since."""
        collection = call.collection
        if collection is None:
            raise ValueError(f"{call.operation}: a read of a loaded collection must name the collection")
        if collection not in self._loaded:
            yield from self._load(call.operation, collection)
        try:
            return (yield call)
        except StoreError as e:
            if not _needs_load(e.__cause__):
                raise
        yield from self._load(call.operation, collection)
        return (yield call)

    def _load(self, operation: str, collection: str) -> Plan[None]:
        state = yield Call(operation, collection, "get_load_state", (collection,))
        if state["state"] != LoadState.Loaded:
            yield Call(operation, collection, "load_collection", (collection,), {"timeout": self.timeout})
        self._loaded.add(collection)

    # --- collections -----------------------------------------------------------------------------

    def _prepare_existing(self, collection: str) -> None:
        self._call("load", collection, lambda: self.client.load_collection(collection))
        self._loaded.add(collection)

    def _create_collection(self, collection: str, dim: int, colbert: bool) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=36)
        schema.add_field("text", DataType.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field(
            "text_more", DataType.ARRAY, element_type=DataType.VARCHAR,
            max_capacity=TEXT_PARTS_MAX, max_length=VARCHAR_MAX,
        )
        schema.add_field("source", DataType.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("start", DataType.INT64)
        schema.add_field("end", DataType.INT64)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=128)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        if colbert:
            schema.add_field(
                "colbert", DataType.ARRAY, element_type=DataType.VARCHAR,
                max_capacity=COLBERT_PARTS_MAX, max_length=VARCHAR_MAX,
            )
        index = self.client.prepare_index_params()
        index.add_index("dense", index_type="AUTOINDEX", metric_type="IP")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        self._call(
            "create collection",
            collection,
            lambda: self.client.create_collection(
                collection, schema=schema, index_params=index, consistency_level="Strong"
            ),
        )
        self._loaded.add(collection)  # created with its indexes, a collection starts loaded

    def _fields(self, collection: str) -> dict[str, dict[str, Any]]:
        info = self._call("describe", collection, lambda: self.client.describe_collection(collection))
        return _schema_fields(info)

    def _schema_problems(self, collection: str, dim: int, colbert: bool) -> list[str]:
        fields = self._fields(collection)
        expected = dict(_EXPECTED)
        if colbert:
            expected[_COLBERT[0]] = _COLBERT[1]
        problems = []
        for name, (dtype, element) in expected.items():
            field = fields.get(name)
            if field is None:
                problems.append(f"field '{name}' is missing")
            elif field["type"] != dtype or (element and field.get("element_type") != element):
                problems.append(f"field '{name}' is {field['type'].name}, expected {dtype.name}")
        have = fields.get("dense", {}).get("params", {}).get("dim")
        if have is not None and int(have) != dim:
            problems.append(f"dense dimension is {have}, this run needs {dim}")
        return problems

    def has_collection(self, collection: str) -> bool:
        return self._call("has collection", collection, lambda: self.client.has_collection(collection))

    def list_collections(self) -> list[str]:
        return sorted(self._call("list collections", None, self.client.list_collections))

    def _aliases_of(self, collection: str) -> list[str]:
        found = self._call("list aliases", collection, lambda: self.client.list_aliases(collection))
        return list(found.get("aliases", []))

    def _drop_collection_call(self, collection: str) -> Call:
        self._loaded.discard(collection)
        return Call("drop collection", collection, "drop_collection", (collection,))

    # --- writes ----------------------------------------------------------------------------------

    def _rows(self, collection: str, records: Sequence[ChunkRecord]) -> list[dict[str, Any]]:
        colbert_field = "colbert" in self._fields(collection)
        return [self._row(collection, r, colbert_field) for r in records]

    def _row(self, collection: str, r: ChunkRecord, colbert_field: bool) -> dict[str, Any]:
        if r.dense is None or r.sparse is None:
            raise self._fail(f"chunk {r.id} of {r.source} has no dense or sparse vector")
        parts = split_utf8(r.text)
        if len(parts) > 1 + TEXT_PARTS_MAX:
            raise self._fail(
                f"chunk {r.id} of {r.source} has {len(r.text.encode())} bytes of text, more than "
                f"the {(1 + TEXT_PARTS_MAX) * VARCHAR_MAX} a chunk can hold in collection "
                f"'{collection}'; lower chunking.chunk_size"
            )
        if len(r.source.encode("utf-8")) > VARCHAR_MAX:
            raise self._fail(f"source path of chunk {r.id} is over {VARCHAR_MAX} bytes")
        row: dict[str, Any] = {
            **r.payload(),
            "id": r.id,
            "text": parts[0],
            "text_more": parts[1:],
            "dense": np.asarray(r.dense, dtype=np.float32).tolist(),
            "sparse": dict(r.sparse) if not isinstance(r.sparse, dict) else r.sparse,
        }
        if not row["sparse"]:
            row["sparse"] = {EMPTY_SPARSE_TOKEN: 1.0}
        if colbert_field:
            if r.colbert is not None and np.shape(r.colbert)[1:] != (len(row["dense"]),):
                raise self._fail(
                    f"ColBERT vectors of chunk {r.id} have shape {np.shape(r.colbert)}, "
                    f"expected (tokens, {len(row['dense'])})"
                )
            row["colbert"] = encode_colbert(r.colbert) if r.colbert is not None else []
            if len(row["colbert"]) > COLBERT_PARTS_MAX:
                raise self._fail(f"ColBERT vectors of chunk {r.id} are too large to store")
        elif r.colbert is not None:
            raise self._fail(
                f"collection '{collection}' was created without ColBERT storage "
                "(store.colbert = false); recreate it with colbert enabled to store ColBERT vectors"
            )
        return row

    @staticmethod
    def _row_bytes(row: dict[str, Any]) -> int:
        text = len(row["text"].encode("utf-8")) + sum(len(p.encode("utf-8")) for p in row["text_more"])
        meta = len(json.dumps(row["metadata"], ensure_ascii=False).encode("utf-8"))
        vectors = 4 * len(row["dense"]) + 12 * len(row["sparse"]) + sum(map(len, row.get("colbert", ())))
        return 256 + text + len(row["source"].encode("utf-8")) + meta + vectors

    def _write_options(self) -> dict[str, Any]:
        return {"timeout": self.timeout}

    def _ids_selector(self, ids: list[str]) -> dict[str, Any]:
        return {"ids": ids}

    def _source_selector(self, source: str) -> dict[str, Any]:
        return {"filter": f"source == {milvus_string(source)}"}

    # --- reads -----------------------------------------------------------------------------------

    def _record(self, row: Mapping[str, Any], dim: int | None = None) -> ChunkRecord:
        text = row["text"] + "".join(row.get("text_more") or ())
        record = ChunkRecord.from_payload(row["id"], {**row, "text": text})
        if "dense" in row:
            record.dense = np.asarray(row["dense"], dtype=np.float32)
            sparse = {int(i): float(w) for i, w in _sparse_items(row["sparse"])}
            sparse.pop(EMPTY_SPARSE_TOKEN, None)
            record.sparse = sparse
            if dim is not None:
                record.colbert = decode_colbert(row.get("colbert") or [], dim)
        return record

    def _get_plan(self, collection: str, ids: Sequence[str], with_vectors: bool) -> Plan[list[ChunkRecord]]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return []
        fields = ["id", *SCALAR_FIELDS]
        dim = None
        if with_vectors:
            info = yield Call("describe", collection, "describe_collection", (collection,))
            schema = _schema_fields(info)
            fields += ["dense", "sparse"]
            if "colbert" in schema:
                fields.append("colbert")
                dim = int(schema["dense"]["params"]["dim"])
        rows: dict[str, ChunkRecord] = {}
        for i in range(0, len(ids), 1000):
            part = ids[i : i + 1000]
            args = {"ids": part, "output_fields": fields}
            call = Call(f"get of {len(part)} chunks", collection, "get", (collection,), args)
            found = yield from self._loaded_call(call)
            rows.update((row["id"], self._record(row, dim)) for row in found)
        return [rows[i] for i in ids if i in rows]

    def _count_plan(self, collection: str) -> Plan[int]:
        args = {"filter": "", "output_fields": ["count(*)"]}
        res = yield from self._loaded_call(Call("count", collection, "query", (collection,), args))
        return int(res[0]["count(*)"])

    def ids_by_source(self, collection: str, source: str | None = None) -> dict[str, set[str]]:
        expr = "" if source is None else f"source == {milvus_string(source)}"

        def scan() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            it = self.client.query_iterator(
                collection, batch_size=self.scan_batch, filter=expr, output_fields=["source"]
            )
            try:
                while batch := it.next():
                    for row in batch:
                        out.setdefault(row["source"], set()).add(row["id"])
            finally:
                it.close()
            return out

        if collection not in self._loaded:
            run(self._load("list of sources", collection), self._execute)
        return self._call("list of sources", collection, scan)

    def _search_plan(self, collection: str, q: Query) -> Plan[list[SearchHit]]:
        expr = to_milvus(q.filter)
        n = q.candidates or q.k
        limit = max(q.k, n) if q.colbert is not None else q.k
        requests = _requests(q, n, expr)
        fields = ["id", *SCALAR_FIELDS]
        if not requests:
            return []
        common = {"limit": limit, "output_fields": fields, "timeout": self.timeout}
        if q.mode == "hybrid":
            args = (collection, requests, _ranker(q.fusion, len(requests)))
            call = Call("hybrid search", collection, "hybrid_search", args, common)
        else:
            req = requests[0]
            search = {
                "data": req.data, "anns_field": req.anns_field, "search_params": req.param, "filter": expr
            }
            call = Call(f"{q.mode} search", collection, "search", (collection,), {**search, **common})
        result = yield from self._loaded_call(call)
        hits = [
            SearchHit(self._record({**hit["entity"], "id": hit["id"]}), float(hit["distance"]))
            for hit in result[0]
        ]
        if q.colbert is not None or q.with_vectors:
            records = yield from self._get_plan(collection, [h.id for h in hits], True)
            full = {r.id: r for r in records}
            hits = [SearchHit(full[h.id], h.score) for h in hits if h.id in full]
            if q.colbert is not None:
                hits = _rerank(hits, q.colbert)[: q.k]
            if not q.with_vectors:
                for h in hits:
                    h.record.dense = h.record.sparse = h.record.colbert = None
        return hits

    def flush(self, collection: str) -> None:
        """Seal the rows written so far into indexed segments.

        Milvus searches rows it has not yet sealed by brute force; on Milvus Lite that made searches
        of 10,000 freshly written chunks 10 times slower until a flush.
        """
        self._call("flush", collection, lambda: self.client.flush(collection, timeout=self.timeout))

    # --- aliases ---------------------------------------------------------------------------------

    def set_alias(self, alias: str, collection: str) -> None:
        exists = self.resolve_alias(alias) is not None
        point = self.client.alter_alias if exists else self.client.create_alias
        verb = "move" if exists else "create"
        self._call(f"{verb} alias '{alias}'", collection, lambda: point(collection, alias))
        self._loaded.discard(alias)  # the collection it names now may not be loaded

    def resolve_alias(self, alias: str) -> str | None:
        def describe() -> str | None:
            if alias not in self.client.list_aliases().get("aliases", []):
                return None
            return self.client.describe_alias(alias)["collection_name"]

        return self._call(f"describe alias '{alias}'", None, describe)

    def _drop_alias_call(self, alias: str) -> Call:
        self._loaded.discard(alias)
        return Call(f"drop alias '{alias}'", None, "drop_alias", (alias,))


def _schema_fields(info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in info["fields"]}


def _needs_load(e: BaseException | None) -> bool:
    """Whether Milvus refused a read because the collection is not loaded."""
    return isinstance(e, MilvusException) and "load" in str(e).lower()


def _sparse_items(value: Any) -> Iterable[tuple[int, float]]:
    if isinstance(value, Mapping):
        return value.items()
    if hasattr(value, "tocoo"):  # scipy sparse row
        coo = value.tocoo()
        return zip(coo.col.tolist(), coo.data.tolist(), strict=True)
    return value


def _requests(q: Query, candidates: int, expr: str) -> list[AnnSearchRequest]:
    """One request per list a checked query searches."""
    requests = []
    if q.mode in ("dense", "hybrid"):
        vector = np.asarray(q.dense, dtype=np.float32).tolist()
        requests.append(AnnSearchRequest([vector], "dense", {"metric_type": "IP"}, candidates, expr or None))
    if q.mode in ("sparse", "hybrid") and q.sparse:  # nothing can match an empty lexical query
        query = {int(i): float(w) for i, w in q.sparse.items()}
        requests.append(AnnSearchRequest([query], "sparse", {"metric_type": "IP"}, candidates, expr or None))
    return requests


def _ranker(fusion: Fusion, lists: int) -> RRFRanker | WeightedRanker:
    if fusion.kind == "rrf":
        return RRFRanker(fusion.k)
    if fusion.kind == "weighted":
        # Raw scores, not Milvus' arctan normalisation: the same weighted sum as the M3 paper and Qdrant.
        return WeightedRanker(*fusion.weights[:lists], norm_score=False)
    raise ValueError(f"fusion {fusion.kind!r} is Qdrant only; use rrf or weighted with Milvus")


def _rerank(hits: list[SearchHit], query: np.ndarray) -> list[SearchHit]:
    scored = [
        SearchHit(h.record, max_sim(query, h.record.colbert)) for h in hits if h.record.colbert is not None
    ]
    return sorted(scored, key=lambda h: -h.score)
