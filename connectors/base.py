"""The one small interface every vector database sits behind."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from m3ingest.errors import ExitCode, M3IngestError

if TYPE_CHECKING:  # numpy is imported by the stores, not by importing the interface
    import numpy as np

SearchMode = Literal["dense", "sparse", "hybrid"]

#: Payload fields every stored chunk carries besides its vectors (DESIGN.md, "Fixed points").
CHUNK_FIELDS = ("text", "source", "chunk_index", "start", "end", "content_hash", "metadata")


@dataclass
class ChunkRecord:
    """One chunk as stored: its UUIDv5 id, payload fields and vectors."""

    id: str
    text: str
    source: str
    chunk_index: int
    start: int
    end: int
    content_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)
    dense: np.ndarray | None = None
    sparse: dict[int, float] | None = None
    colbert: np.ndarray | None = None

    def payload(self) -> dict[str, Any]:
        """The fields stored beside the vectors (``CHUNK_FIELDS``), as the stores hold them."""
        return {
            "text": self.text,
            "source": self.source,
            "chunk_index": int(self.chunk_index),
            "start": int(self.start),
            "end": int(self.end),
            "content_hash": self.content_hash,
            "metadata": self.metadata,
        }

    @classmethod
    def from_payload(cls, id: str, payload: Mapping[str, Any]) -> ChunkRecord:
        """The chunk, without vectors, whose ``payload()`` a store returned."""
        return cls(
            id=id,
            text=payload["text"],
            source=payload["source"],
            chunk_index=int(payload["chunk_index"]),
            start=int(payload["start"]),
            end=int(payload["end"]),
            content_hash=payload["content_hash"],
            metadata=dict(payload.get("metadata") or {}),
        )


@dataclass(frozen=True)
class Fusion:
    """How hybrid search merges the dense and sparse result lists.

    ``rrf``: score = sum over lists of 1 / (k + rank), rank starting at 1.
    ``weighted``: the database's weighted-score fusion with ``weights`` (dense, sparse).
    ``dbsf``: Qdrant's distribution-based score fusion (Qdrant only).
    """

    kind: Literal["rrf", "weighted", "dbsf"] = "rrf"
    k: int = 60
    weights: tuple[float, float] = (0.5, 0.5)

    @classmethod
    def rrf(cls, k: int = 60) -> Fusion:
        return cls("rrf", k=k)

    @classmethod
    def weighted(cls, dense: float = 0.5, sparse: float = 0.5) -> Fusion:
        return cls("weighted", weights=(dense, sparse))


@dataclass
class SearchHit:
    """A search result: the chunk (vectors only when asked for) and the score that ranked it."""

    record: ChunkRecord
    score: float

    @property
    def id(self) -> str:
        return self.record.id


#: Structured metadata filter, see ``m3ingest.connectors.filters``.
Filter = Mapping[str, Any]


@dataclass(frozen=True)
class Query:
    """One search request, as ``VectorStore.search`` takes it apart in its keywords."""

    dense: np.ndarray | None = None
    sparse: Mapping[int, float] | None = None
    mode: SearchMode = "hybrid"
    k: int = 10
    filter: Filter | None = None
    fusion: Fusion = Fusion()
    candidates: int | None = None
    with_vectors: bool = False
    colbert: np.ndarray | None = None

    def check(self) -> Query:
        """This query, once its mode and vectors fit together (else ``ValueError``)."""
        if self.mode not in ("dense", "sparse", "hybrid"):
            raise ValueError(f"search mode must be dense, sparse or hybrid, got {self.mode!r}")
        if self.mode != "sparse" and self.dense is None:
            raise ValueError(f"{self.mode} search needs a dense query vector")
        if self.mode != "dense" and self.sparse is None:
            raise ValueError(f"{self.mode} search needs a sparse query vector")
        return self


class StoreError(M3IngestError):
    """A store operation failed; the message names the backend, where the store is (credentials
    removed), the operation and the collection."""

    exit_code = ExitCode.STORE_UNAVAILABLE


class StoreNotFoundError(StoreError):
    """An embedded store opened to read (``create=False``) does not exist."""


class SchemaMismatchError(StoreError):
    """An existing collection does not have the schema this run needs."""


class VectorStore(ABC):
    """A Milvus or Qdrant client, embedded or remote, seen through one interface.

    Every method takes the collection (or alias) name, so one store serves versioned collections
    and the alias that points at the live one.
    """

    #: Short name used in messages, e.g. ``"milvus"`` or ``"qdrant"``.
    backend: str = ""

    @property
    def label(self) -> str:
        """The store as its messages name it, e.g. ``"milvus at http://host:19530"`` (no credentials)."""
        return self.backend

    @abstractmethod
    def ensure_collection(self, collection: str, dim: int, colbert: bool = False) -> None:
        """Create the collection, or check that the existing one has this schema."""

    @abstractmethod
    def has_collection(self, collection: str) -> bool:
        """Whether a collection (or alias) of this name exists."""

    @abstractmethod
    def list_collections(self) -> list[str]:
        """Names of all collections (not aliases)."""

    @abstractmethod
    def drop_collection(self, collection: str) -> None:
        """Delete a collection and everything in it; no error when it does not exist."""

    @abstractmethod
    def upsert(self, collection: str, records: Sequence[ChunkRecord]) -> None:
        """Insert or replace chunks by id; returns once the store has acknowledged them."""

    @abstractmethod
    def delete(self, collection: str, ids: Iterable[str]) -> None:
        """Delete chunks by id; unknown ids are ignored."""

    @abstractmethod
    def delete_source(self, collection: str, source: str) -> None:
        """Delete every chunk of one source."""

    @abstractmethod
    def get(
        self, collection: str, ids: Sequence[str], with_vectors: bool = False
    ) -> list[ChunkRecord]:
        """Fetch chunks by id (missing ids are left out), with their vectors when asked."""

    @abstractmethod
    def count(self, collection: str) -> int:
        """Number of chunks stored."""

    @abstractmethod
    def ids_by_source(self, collection: str, source: str | None = None) -> dict[str, set[str]]:
        """Every source held and the chunk ids it has (for verification); only ``source``'s when
        given (an empty dict when the store holds none of its chunks)."""

    def search(
        self,
        collection: str,
        *,
        dense: np.ndarray | None = None,
        sparse: Mapping[int, float] | None = None,
        mode: SearchMode = "hybrid",
        k: int = 10,
        filter: Filter | None = None,
        fusion: Fusion = Fusion(),
        candidates: int | None = None,
        with_vectors: bool = False,
        colbert: np.ndarray | None = None,
    ) -> list[SearchHit]:
        """Top-``k`` chunks for one query, best first.

        ``candidates`` is how many hits each list contributes to hybrid fusion (default: ``k``).
        ``colbert`` (query token vectors) re-ranks the fused candidates by MaxSim as a last stage,
        in a collection created with ColBERT storage.
        """
        query = Query(dense, sparse, mode, k, filter, fusion, candidates, with_vectors, colbert)
        return self._search(collection, query.check())

    async def aget(
        self, collection: str, ids: Sequence[str], with_vectors: bool = False
    ) -> list[ChunkRecord]:
        """``get`` for async callers, without blocking the event loop.

        This default runs ``get`` in a worker thread; stores with an async client override it.
        """
        import asyncio

        return await asyncio.to_thread(self.get, collection, ids, with_vectors)

    async def asearch(
        self,
        collection: str,
        *,
        dense: np.ndarray | None = None,
        sparse: Mapping[int, float] | None = None,
        mode: SearchMode = "hybrid",
        k: int = 10,
        filter: Filter | None = None,
        fusion: Fusion = Fusion(),
        candidates: int | None = None,
        with_vectors: bool = False,
        colbert: np.ndarray | None = None,
    ) -> list[SearchHit]:
        """``search`` for async callers, without blocking the event loop."""
        query = Query(dense, sparse, mode, k, filter, fusion, candidates, with_vectors, colbert)
        return await self._asearch(collection, query.check())

    @abstractmethod
    def _search(self, collection: str, query: Query) -> list[SearchHit]:
        """``search``, its keywords gathered in ``query``."""

    async def _asearch(self, collection: str, query: Query) -> list[SearchHit]:
        """``asearch``: this default runs ``_search`` in a worker thread; stores with an async
        client override it."""
        import asyncio

        return await asyncio.to_thread(self._search, collection, query)

    def flush(self, collection: str) -> None:
        """Make the chunks written so far durable and fully indexed (ingest calls it after a run).

        A no-op where the database indexes every write as it comes (this default).
        """

    @abstractmethod
    def set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` in one atomic step (create or move it)."""

    @abstractmethod
    def resolve_alias(self, alias: str) -> str | None:
        """The collection an alias points at, or None when there is no such alias."""

    @abstractmethod
    def drop_alias(self, alias: str) -> None:
        """Remove an alias; no error when it does not exist."""

    def close(self) -> None:
        """Release the client."""

    async def aclose(self) -> None:
        """``close`` for async code: also closes the async client of the running event loop.

        Async clients belong to the loop that opened them; ``close`` cannot close those of loops
        that have already ended, so an async app calls this before its loop ends.
        """
        self.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
