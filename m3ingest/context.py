"""The collection a command works on: where its store is, its records and lock, and its live target.

Every command builds one ``CollectionContext`` from its configuration and asks it, rather than
re-deriving paths or re-testing the store URI. ``name`` is the configured collection, which
``rebuild`` turns into an alias; ``target`` is the collection it points at (the name itself
until the alias is resolved with ``resolved(store)``). Each target has its own records; the lock
belongs to the name, so a rebuild and a sync of the same alias never interleave.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from m3ingest.connectors import StoreLocation, parse_location

if TYPE_CHECKING:
    from m3ingest.config import Config
    from m3ingest.connectors import VectorStore
    from m3ingest.locking import CollectionLock
    from m3ingest.records import Records


@dataclass(frozen=True)
class CollectionContext:
    """The configured collection of one command (see the module docstring)."""

    config: Config
    location: StoreLocation
    name: str
    target: str

    @classmethod
    def from_config(cls, config: Config) -> CollectionContext:
        """The context of ``config.store.collection``, its alias not yet resolved."""
        name = config.store.collection
        return cls(config, parse_location(config.store.uri), name, name)

    def resolved(self, store: VectorStore) -> CollectionContext:
        """This context with ``target`` the collection the name points at when it is an alias."""
        return replace(self, target=store.resolve_alias(self.name) or self.name)

    def version(self, target: str) -> CollectionContext:
        """The context of another collection of the same store (a version built by ``rebuild``),
        locked as this one."""
        return replace(self, target=target)

    @property
    def records_folder(self) -> Path | None:
        """The folder of this store's record files; None for in-memory records (a ``:memory:``
        store lives and dies with one process)."""
        configured = self.config.records.path
        if configured:
            path = Path(configured).expanduser()
            return path.parent if path.suffix in (".sqlite", ".db") else path
        if self.location.kind == "memory":
            return None
        if self.location.kind == "embedded":
            assert self.location.path is not None
            return self.location.path.parent / f"{self.location.path.name}.records"
        return Path(".m3ingest")

    def records_path_of(self, collection: str) -> Path | None:
        """The records file of ``collection`` in this store (None: in memory)."""
        configured = self.config.records.path
        if configured and Path(configured).suffix in (".sqlite", ".db"):
            return Path(configured).expanduser()
        folder = self.records_folder
        return folder / f"{collection}.sqlite" if folder is not None else None

    @property
    def records_path(self) -> Path | None:
        """The records file of ``target``."""
        return self.records_path_of(self.target)

    @property
    def lock_path(self) -> Path | None:
        """The lock file of ``name`` (None when the records are in memory: nothing to share)."""
        path = self.records_path_of(self.name)
        return path.with_name(path.name + ".lock") if path is not None else None

    def has_local_state(self) -> bool:
        """Whether anything of this collection exists on this machine yet: an embedded store, the
        records of the target or the lock."""
        if self.location.kind == "embedded" and self.location.exists():
            return True
        return any(p is not None and p.exists() for p in (self.records_path, self.lock_path))

    def open_store(self, *, create: bool = True) -> VectorStore:
        """A client of the configured store; with ``create=False`` nothing is made on disk, and a
        missing embedded store raises ``StoreNotFoundError``."""
        from m3ingest.connectors import store_from_config

        return store_from_config(self.config.store, create=create)

    def open_records(self, *, read_only: bool = False) -> Records:
        """The records of ``target`` (read-only: the file must exist; see ``records_exist``)."""
        from m3ingest.records import Records

        path = self.records_path
        return Records(path if path is not None else ":memory:", read_only=read_only)

    def records_exist(self) -> bool:
        path = self.records_path
        return path is None or path.exists()

    def lock(
        self,
        *,
        wait: bool = False,
        timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> CollectionLock | nullcontext[None]:
        """The lock that keeps runs on this collection from interleaving."""
        from m3ingest.locking import CollectionLock

        path = self.lock_path
        if path is None:
            return nullcontext()
        return CollectionLock(path, self.name, wait=wait, timeout=timeout, stop=stop)
