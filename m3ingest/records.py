"""The SQLite record store of a collection: what each source looked like and which chunks it has.

One database file per collection, in WAL mode. Tables:

- ``meta``: the model, chunking settings and schema version that built the collection;
- ``sources``: source id -> size, mtime_ns, content hash and its chunks as ``[[id, signature], ...]``
  (the signature is a hash of the chunk's payload, so a moved chunk is rewritten, not re-encoded);
- ``intents``: the chunk ids a run is about to write (``touched``) or delete (``stale``) for a
  source, written before the store is changed and cleared in the same transaction that commits
  the source's new record. A leftover intent means a run died in between; ``reconcile`` repairs it.
  ``touched`` is ``null`` when other processes (Ray write workers) write the source's new chunks:
  they are then found in the store by source, as every id there that the record does not hold.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from m3ingest.errors import SettingsMismatchError, StateError

if TYPE_CHECKING:
    from m3ingest.config import Config
    from m3ingest.connectors import VectorStore

#: Version of the stored chunk layout; a collection built under another one must be rebuilt.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    source_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    chunks TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
    source_id TEXT PRIMARY KEY,
    touched TEXT NOT NULL,
    stale TEXT NOT NULL
);
"""


@dataclass
class SourceRecord:
    """What the last successful run saw of a source and the chunks it left in the store."""

    source_id: str
    size: int
    mtime_ns: int
    content_hash: str
    #: chunk id -> payload signature, in chunk order.
    chunks: dict[str, str] = field(default_factory=dict)

    @property
    def chunk_ids(self) -> list[str]:
        return list(self.chunks)


def settings_of(config: Config, checkpoint: str | None) -> dict[str, str]:
    """The settings that decide what a collection holds; a sync with other ones is refused.

    ``checkpoint`` is the fingerprint of the model's files (a hub commit or a hash of a local
    folder), so a checkpoint that changed under the same name is caught too.
    """
    settings = {
        "schema_version": str(SCHEMA_VERSION),
        "model": config.model.name,
        "chunking": json.dumps(
            {"chunk_size": config.chunking.chunk_size, "overlap": config.chunking.overlap}
        ),
        "colbert": json.dumps(config.store.colbert),
    }
    if checkpoint is not None:
        settings["checkpoint"] = checkpoint
    return settings


class Records:
    """The record store of one collection; safe to share between the pipeline's threads.

    ``path`` is a file or ``":memory:"``. ``read_only`` opens an existing file without changing
    it (the file must exist). A damaged or unwritable file raises ``StateError`` naming it.
    """

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._lock = threading.RLock()
        with self._guard():
            if str(path) == ":memory:":
                self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            elif read_only:
                uri = Path(path).resolve().as_uri() + "?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            else:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            if not read_only:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            self._db.execute("SELECT count(*) FROM sources").fetchone()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn SQLite and file-system failures into a ``StateError`` that says what to do."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            raise StateError(
                f"the records file {self.path} is damaged or unreadable ({e}); move it aside, run "
                "`m3ingest sync PATH...` to record every file again (they are encoded again, under "
                "the same chunk ids), then `m3ingest verify --repair` to delete the chunks of files "
                "that are gone"
            ) from None
        except OSError as e:
            raise StateError(f"cannot write the records at {self.path}: {e.strerror or e}") from None

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock, self._guard():
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> _Tx:
        return _Tx(self)

    # -- settings ---------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self._rows("SELECT key, value FROM meta"))

    def check_settings(self, settings: dict[str, str], collection: str) -> None:
        """Refuse settings that differ from the ones the collection was built with (if any yet)."""
        held = self.meta()
        differ = [k for k, v in settings.items() if k in held and held[k] != v]
        if differ:
            detail = "; ".join(f"{k}: built with {held[k]}, now {settings[k]}" for k in differ)
            raise SettingsMismatchError(
                f"collection {collection!r} was built with other settings ({detail}); "
                f"run `m3ingest rebuild` to re-index it with the new ones"
            )

    def record_settings(self, settings: dict[str, str]) -> None:
        """Record the settings a collection is built with (kept: ones recorded before)."""
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", settings.items())

    # -- sources ----------------------------------------------------------------------------

    def get(self, source_id: str) -> SourceRecord | None:
        rows = self._rows(
            "SELECT source_id, size, mtime_ns, content_hash, chunks FROM sources WHERE source_id = ?",
            (source_id,),
        )
        return _record(rows[0]) if rows else None

    def source_ids(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT source_id FROM sources ORDER BY 1")]

    def all(self) -> Iterator[SourceRecord]:
        rows = self._rows(
            "SELECT source_id, size, mtime_ns, content_hash, chunks FROM sources ORDER BY 1"
        )
        return (_record(r) for r in rows)

    def chunk_ids(self) -> dict[str, set[str]]:
        """Source id -> chunk ids, as the records say (for verification)."""
        return {r.source_id: set(r.chunks) for r in self.all()}

    def counts(self) -> tuple[int, int]:
        """(sources, chunks) recorded."""
        sources, chunks = self._rows(
            "SELECT count(*), coalesce(sum(json_array_length(chunks)), 0) FROM sources"
        )[0]
        return int(sources), int(chunks)

    def touch(self, source_id: str, size: int, mtime_ns: int) -> None:
        """A source whose content is unchanged got a new size or mtime (nothing was written for
        it, so an intent announced for it is cleared)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE sources SET size = ?, mtime_ns = ? WHERE source_id = ?",
                (size, mtime_ns, source_id),
            )
            db.execute("DELETE FROM intents WHERE source_id = ?", (source_id,))

    def begin(self, source_id: str, touched: list[str] | None, stale: list[str]) -> None:
        """Declare the chunk ids about to be written and deleted, before the store changes;
        ``touched=None``: other processes write its new chunks, whichever they turn out to be."""
        self.begin_many([source_id], touched, stale)

    def begin_many(
        self, source_ids: Iterable[str], touched: list[str] | None = None, stale: Sequence[str] = ()
    ) -> None:
        """``begin`` for many sources in one transaction (Ray workers are about to write them)."""
        t, d = json.dumps(touched), json.dumps(list(stale))
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO intents VALUES (?, ?, ?)", ((s, t, d) for s in source_ids)
            )

    def abandon(self, source_id: str) -> None:
        """Clear the intent of a source nothing was written for (it failed before encoding)."""
        with self._transaction() as db:
            db.execute("DELETE FROM intents WHERE source_id = ?", (source_id,))

    def commit(self, record: SourceRecord) -> None:
        """Replace a source's record and clear its intent, in one transaction."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?, ?)",
                (
                    record.source_id,
                    record.size,
                    record.mtime_ns,
                    record.content_hash,
                    json.dumps(list(record.chunks.items())),
                ),
            )
            db.execute("DELETE FROM intents WHERE source_id = ?", (record.source_id,))

    def remove(self, source_id: str) -> None:
        """Forget a source whose chunks are gone from the store, and its intent."""
        with self._transaction() as db:
            db.execute("DELETE FROM sources WHERE source_id = ?", (source_id,))
            db.execute("DELETE FROM intents WHERE source_id = ?", (source_id,))

    def forget_chunks(self, missing: Mapping[str, Iterable[str]]) -> None:
        """Forget chunk ids the store no longer holds, so that the next run re-reads their sources
        and encodes exactly those chunks (a source left with none is forgotten whole)."""
        for source_id, ids in missing.items():
            record = self.get(source_id)
            if record is None:
                continue
            gone = set(ids)
            kept = {cid: sig for cid, sig in record.chunks.items() if cid not in gone}
            if kept:
                self.commit(SourceRecord(source_id, -1, -1, "", kept))
            else:
                self.remove(source_id)

    def intents(self) -> dict[str, tuple[list[str] | None, list[str]]]:
        rows = self._rows("SELECT source_id, touched, stale FROM intents")
        return {s: (json.loads(t), json.loads(d)) for s, t, d in rows}

    def reconcile(self, store: VectorStore, collection: str) -> int:
        """Repair what a run that died mid-source left behind; returns the sources repaired.

        The store may hold any part of what an intent announced. Every announced id is deleted
        (with ``touched=None``: every id of the source in the store that its record does not
        hold), the record keeps only the chunks no intent touched, and its content hash is
        cleared, so the next run re-processes the source and writes exactly what is missing.
        """
        intents = self.intents()
        exists = store.has_collection(collection) if intents else False
        for source_id, (touched, stale) in intents.items():
            record = self.get(source_id)
            held = record.chunks if record is not None else {}
            if touched is None:
                found = store.ids_by_source(collection, source_id) if exists else {}
                touched = sorted(found.get(source_id, set()) - held.keys())
            doubtful = set(touched) | set(stale)
            if doubtful and exists:
                store.delete(collection, sorted(doubtful))
            self.forget_chunks({source_id: doubtful} if record is not None else {})
            self.abandon(source_id)
        return len(intents)

    def clear(self) -> None:
        """Forget everything (the collection was dropped)."""
        with self._transaction() as db:
            db.execute("DELETE FROM sources")
            db.execute("DELETE FROM intents")
            db.execute("DELETE FROM meta")


class _Tx:
    """One write transaction; SQLite failures become ``StateError``."""

    def __init__(self, records: Records) -> None:
        self._records = records

    def __enter__(self) -> sqlite3.Connection:
        self._records._lock.acquire()
        try:
            with self._records._guard():
                self._records._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._records._lock.release()
            raise
        return self._records._db

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: object) -> Literal[False]:
        try:
            with self._records._guard():
                self._records._db.execute("ROLLBACK" if exc_type else "COMMIT")
                if isinstance(exc, sqlite3.DatabaseError):
                    raise exc
        finally:
            self._records._lock.release()
        return False


def _record(row: tuple[Any, ...]) -> SourceRecord:
    source_id, size, mtime_ns, content_hash, chunks = row
    return SourceRecord(source_id, size, mtime_ns, content_hash, dict(json.loads(chunks)))
