"""What every store over a database client shares: calls with retries and errors that name the
store, read plans run by the sync client or by one async client per event loop, byte-sized writes,
aliases and closing."""

from __future__ import annotations

import asyncio
import os
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import retry
from .base import (
    ChunkRecord,
    Query,
    SchemaMismatchError,
    SearchHit,
    StoreError,
    StoreNotFoundError,
    VectorStore,
)
from .batching import batches_by_bytes
from .calls import Call, Plan, arun, run
from .holders import holders
from .location import parse_location
from .loops import PerLoop

T = TypeVar("T")
C = TypeVar("C")  # the sync client
A = TypeVar("A")  # the async client


class ClientStore(VectorStore, Generic[C, A]):
    """A ``VectorStore`` over one database client, where each engine adds only what is its own:
    connecting, its schema, the rows it writes and the plans of its reads.

    Every call goes through ``_execute`` (or ``_aexecute`` with the running loop's async client):
    transient failures are retried, and what still fails is a ``StoreError`` naming the backend,
    where the store is (credentials removed), the operation and the collection.
    """

    #: How messages call an embedded store of this engine, e.g. ``"Milvus Lite file"``.
    embedded_name = ""
    #: Most bytes of rows in one upsert request (each engine sets its default).
    max_batch_bytes = 16 * 1024 * 1024
    #: Ids per delete request.
    delete_batch = 10_000
    #: Rows per page when listing every chunk (``ids_by_source``).
    scan_batch = 4096

    def __init__(
        self,
        uri: str,
        *,
        timeout: float = 30.0,
        max_batch_bytes: int | None = None,
        retry_policy: retry.RetryPolicy = retry.RetryPolicy(),
        create: bool = True,
    ) -> None:
        """Connect to the store at ``uri``.

        ``max_batch_bytes`` overrides the engine's request budget; ``create=False`` (for commands
        that only read) raises ``StoreNotFoundError`` where an embedded store does not exist,
        creating nothing on disk.
        """
        self.uri = uri
        self.location = parse_location(uri)
        self.timeout = timeout
        if max_batch_bytes is not None:
            self.max_batch_bytes = max_batch_bytes
        self.retry_policy = retry_policy
        if not create and not self.location.exists():
            raise StoreNotFoundError(
                f"no {self.embedded_name} at {self.location.display}; run `m3ingest ingest PATH` "
                "first, or set store.uri"
            )
        self.client: C = self._call("connect", None, self._connect)
        self._async_clients: PerLoop[A] = PerLoop(self._open_async, self._close_async)

    @property
    def label(self) -> str:
        """The store as messages name it: the backend and where it is, without credentials."""
        if self.location.kind == "memory":
            return f"{self.backend} in memory"
        return f"{self.backend} at {self.location.display}"

    # --- what each engine provides ---------------------------------------------------------------

    @abstractmethod
    def _connect(self) -> C:
        """The sync client (its failures are retried while transient)."""

    @abstractmethod
    async def _open_async(self) -> A:
        """A new async client for the running event loop."""

    @abstractmethod
    async def _close_async(self, client: A) -> None:
        """Close an async client ``_open_async`` opened."""

    def _has_async_client(self) -> bool:
        """Whether async reads use an async client; else they run the sync client in a worker thread."""
        return True

    @staticmethod
    @abstractmethod
    def is_transient(exc: BaseException) -> bool:
        """Whether a failure of this engine's client is worth another try."""

    @abstractmethod
    def _create_collection(self, collection: str, dim: int, colbert: bool) -> None:
        """Create a collection of the m3ingest schema."""

    @abstractmethod
    def _schema_problems(self, collection: str, dim: int, colbert: bool) -> list[str]:
        """How an existing collection differs from the schema this run needs (empty: it matches)."""

    def _prepare_existing(self, collection: str) -> None:
        """Make an existing collection of the right schema ready for use (by default: nothing)."""

    @abstractmethod
    def _get_plan(self, collection: str, ids: Sequence[str], with_vectors: bool) -> Plan[list[ChunkRecord]]:
        """The calls of ``get``."""

    @abstractmethod
    def _search_plan(self, collection: str, q: Query) -> Plan[list[SearchHit]]:
        """The calls of ``search``."""

    @abstractmethod
    def _count_plan(self, collection: str) -> Plan[int]:
        """The calls of ``count``."""

    @abstractmethod
    def _rows(self, collection: str, records: Sequence[ChunkRecord]) -> list[Any]:
        """The records as this engine's upsert takes them (checked: an error names the chunk)."""

    @staticmethod
    @abstractmethod
    def _row_bytes(row: Any) -> int:
        """An upper estimate of one row's size in a request."""

    @abstractmethod
    def _write_options(self) -> dict[str, Any]:
        """Keywords of every upsert and delete call."""

    @abstractmethod
    def _ids_selector(self, ids: list[str]) -> dict[str, Any]:
        """Keywords of a delete of these ids."""

    @abstractmethod
    def _source_selector(self, source: str) -> dict[str, Any]:
        """Keywords of a delete of every chunk of ``source``."""

    @abstractmethod
    def _aliases_of(self, collection: str) -> list[str]:
        """The aliases that point at ``collection``."""

    @abstractmethod
    def _drop_collection_call(self, collection: str) -> Call:
        """The call that drops a collection."""

    @abstractmethod
    def _drop_alias_call(self, alias: str) -> Call:
        """The call that removes an alias."""

    # --- calls -----------------------------------------------------------------------------------

    def _fail(self, message: str, kind: type[StoreError] = StoreError) -> StoreError:
        """An error of this store: the message after the store's label."""
        return kind(f"{self.label}: {message}")

    def _in_use(self, lock: Path) -> StoreError:
        """The error for an embedded store that is open elsewhere, naming who holds it if known."""
        held = holders(lock)
        others = {pid: command for pid, command in held.items() if pid != os.getpid()}
        if not others and os.getpid() in held:
            return self._fail(
                f"the {self.embedded_name} is already open in this process; close that store first, "
                "or use it instead of opening a second one"
            )
        who = "; ".join(f"pid {pid} ({command})" for pid, command in others.items())
        return self._fail(
            f"the {self.embedded_name} is in use by another process{f' ({who})' if who else ''}; "
            "an embedded store opens in one process at a time: stop that process, or use a server"
        )

    def _call(self, operation: str, collection: str | None, fn: Callable[[], T]) -> T:
        return retry.call(
            fn,
            store=self.label,
            operation=operation,
            collection=collection,
            is_transient=self.is_transient,
            policy=self.retry_policy,
        )

    def _execute(self, call: Call) -> Any:
        """Make ``call`` with the sync client."""
        return self._call(call.operation, call.collection, lambda: call.on(self.client))

    async def _aexecute(self, call: Call) -> Any:
        """Make ``call`` with the running loop's async client, with ``_execute``'s retries and errors."""
        if not self._has_async_client():
            return await asyncio.to_thread(self._execute, call)

        async def attempt() -> Any:
            return await call.on(await self._async_clients.get())

        return await retry.acall(
            attempt,
            store=self.label,
            operation=call.operation,
            collection=call.collection,
            is_transient=self.is_transient,
            policy=self.retry_policy,
        )

    # --- reads -----------------------------------------------------------------------------------

    def get(self, collection: str, ids: Sequence[str], with_vectors: bool = False) -> list[ChunkRecord]:
        return run(self._get_plan(collection, ids, with_vectors), self._execute)

    async def aget(
        self, collection: str, ids: Sequence[str], with_vectors: bool = False
    ) -> list[ChunkRecord]:
        return await arun(self._get_plan(collection, ids, with_vectors), self._aexecute)

    def _search(self, collection: str, query: Query) -> list[SearchHit]:
        return run(self._search_plan(collection, query), self._execute)

    async def _asearch(self, collection: str, query: Query) -> list[SearchHit]:
        return await arun(self._search_plan(collection, query), self._aexecute)

    def count(self, collection: str) -> int:
        return run(self._count_plan(collection), self._execute)

    # --- writes ----------------------------------------------------------------------------------

    def upsert(self, collection: str, records: Sequence[ChunkRecord]) -> None:
        """Insert or replace chunks by id, in requests of at most ``max_batch_bytes``."""
        if not records:
            return
        rows = self._rows(collection, records)
        for batch in batches_by_bytes(rows, self._row_bytes, self.max_batch_bytes):
            args = (collection, batch)
            self._execute(Call(f"upsert of {len(batch)} chunks", collection, "upsert", args, self._write_options()))

    def delete(self, collection: str, ids: Iterable[str]) -> None:
        ids = list(ids)
        for i in range(0, len(ids), self.delete_batch):
            part = ids[i : i + self.delete_batch]
            kwargs = {**self._ids_selector(part), **self._write_options()}
            self._execute(Call(f"delete of {len(part)} chunks", collection, "delete", (collection,), kwargs))

    def delete_source(self, collection: str, source: str) -> None:
        kwargs = {**self._source_selector(source), **self._write_options()}
        self._execute(Call(f"delete of source {source!r}", collection, "delete", (collection,), kwargs))

    # --- collections and aliases -----------------------------------------------------------------

    def ensure_collection(self, collection: str, dim: int, colbert: bool = False) -> None:
        """Create the collection, or check that the existing one has this schema."""
        if not self.has_collection(collection):
            self._create_collection(collection, dim, colbert)
            return
        problems = self._schema_problems(collection, dim, colbert)
        if problems:
            raise self._fail(
                f"collection '{collection}' does not match the m3ingest schema: {'; '.join(problems)}. "
                "Use another collection name or drop this one (m3ingest drop).",
                SchemaMismatchError,
            )
        self._prepare_existing(collection)

    def drop_collection(self, collection: str) -> None:
        """Drop the collection and the aliases that point at it; dropping an alias name drops the alias."""
        if self.resolve_alias(collection) is not None:
            self.drop_alias(collection)
            return
        if not self.has_collection(collection):
            return
        for alias in self._aliases_of(collection):
            self.drop_alias(alias)
        self._execute(self._drop_collection_call(collection))

    def drop_alias(self, alias: str) -> None:
        if self.resolve_alias(alias) is not None:
            self._execute(self._drop_alias_call(alias))

    # --- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._async_clients.close()
        self.client.close()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self._async_clients.aclose()
        self.close()
