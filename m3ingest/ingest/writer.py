"""The write stage: store writes and record commits, applied in order on one thread, and ``Run``.

Per file the writer keeps this order, so a crash at any point is repaired by
``Records.reconcile``: intent (ids about to be written and deleted) -> upserts -> deletes of
replaced chunks -> one transaction that replaces the record and clears the intent.

With ``workers_upsert``, other processes (Ray write actors) upsert the encoded chunks, after the
driver announced every file (``Records.begin_many``); the writer then does the rest: rewrites,
deletes of replaced chunks and record commits.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from m3ingest.faults import crash_point
from m3ingest.ingest.encoding import LazyEncoder, encode_entries
from m3ingest.ingest.plan import Failed, Plan, Prepared, Unchanged, unchanged
from m3ingest.ingest.stage import Stage
from m3ingest.ingest.summary import Summary
from m3ingest.records import Records, SourceRecord

if TYPE_CHECKING:
    from m3ingest.connectors import ChunkRecord, VectorStore
    from m3ingest.context import CollectionContext
    from m3ingest.ingest.plan import Entry
    from m3ingest.sources import SourceFailure, SourceFile

log = logging.getLogger("m3ingest.ingest")


@dataclass
class Begin:
    """Record the intent of a file before the store changes."""

    plan: Plan


@dataclass
class Abandon:
    """Clear the intent announced for a file that failed before anything was written."""

    source_id: str


@dataclass
class Upsert:
    """Write encoded chunks."""

    chunks: list[ChunkRecord]


@dataclass
class Rewrite:
    """Rewrite held chunks whose payload moved, with their stored vectors."""

    plan: Plan


@dataclass
class Written:
    """A file whose new chunks another process wrote: count them, then commit."""

    plan: Plan
    chunks: int


@dataclass
class Commit:
    """Delete a file's replaced chunks, then commit its record."""

    plan: Plan


@dataclass
class Touch:
    """Record the new size and mtime of a file whose bytes did not change."""

    file: SourceFile


@dataclass
class Remove:
    """Delete every chunk of a file that is gone, then its record."""

    record: SourceRecord


Job = Begin | Abandon | Upsert | Rewrite | Written | Commit | Touch | Remove


class Writer(Stage[Job]):
    """Applies store writes and record commits in the order they were put (see ``Stage``)."""

    def __init__(self, run: Run) -> None:
        super().__init__("m3ingest-writer", size=4)
        self._run = run

    def apply(self, job: Job) -> None:
        self._apply(job)

    def _apply(self, job: Job) -> None:
        run = self._run
        match job:
            case Begin(plan):
                touched: list[str] | None = [e.id for e in plan.encode] + [e.id for e in plan.rewrite]
                if run.workers_upsert and plan.encode:
                    touched = None  # written elsewhere: a crash is repaired from what the store holds
                run.records.begin(plan.file.source_id, touched, plan.stale)
            case Abandon(source_id):
                if run.workers_upsert:
                    run.records.abandon(source_id)
            case Upsert(chunks):
                self._upsert(chunks)
            case Rewrite(plan):
                self._rewrite(plan)
            case Written(plan, chunks):
                run.ensure_collection()
                run.summary.chunks_written += chunks
                self._commit(plan)
            case Commit(plan):
                self._commit(plan)
            case Touch(file):
                run.records.touch(file.source_id, file.size, file.mtime_ns)
            case Remove(record):
                self._remove(record)

    def _upsert(self, chunks: list[ChunkRecord]) -> None:
        run = self._run
        run.ensure_collection()
        crash_point("before_upsert")
        run.store.upsert(run.target, chunks)
        crash_point("after_upsert")
        run.summary.chunks_written += len(chunks)

    def _rewrite(self, plan: Plan) -> None:
        run = self._run
        wanted = {e.id: e for e in plan.rewrite}
        stored = {c.id: c for c in run.store.get(run.target, list(wanted), with_vectors=True)}
        missing = [e for cid, e in wanted.items() if cid not in stored]
        chunks = [
            _with_payload(stored[cid], plan.file.source_id, e) for cid, e in wanted.items() if cid in stored
        ]
        if missing:
            sources = [plan.file.source_id] * len(missing)
            chunks += encode_entries(run.encoder, sources, missing, run.colbert)
            run.summary.tokens_encoded += sum(len(e.chunk.token_ids) for e in missing)
        self._upsert(chunks)

    def _commit(self, plan: Plan) -> None:
        run = self._run
        run.ensure_collection()
        if plan.stale:
            run.store.delete(run.target, plan.stale)
            run.summary.chunks_deleted += len(plan.stale)
        crash_point("after_delete")
        run.records.commit(plan.record())
        crash_point("after_commit")

    def _remove(self, record: SourceRecord) -> None:
        run = self._run
        ids = record.chunk_ids
        run.records.begin(record.source_id, [], ids)
        crash_point("delete_source")
        if ids:
            run.store.delete(run.target, ids)
        run.records.remove(record.source_id)
        run.summary.chunks_deleted += len(ids)
        run.summary.files_deleted += 1


def _with_payload(stored: ChunkRecord, source_id: str, e: Entry) -> ChunkRecord:
    stored.source = source_id
    stored.chunk_index = e.chunk.index
    stored.start, stored.end = e.chunk.start, e.chunk.end
    stored.metadata = e.metadata
    return stored


class Run:
    """What one run of either executor holds, as a context manager: on entry the records are
    reconciled with the store and the writer started; ``admit`` and ``start`` count each file and
    queue its jobs; ``end`` removes what is gone and waits for every write.

    The collection is created, and the settings it is built with recorded, only when its first
    chunks are written, so a run that fails before that leaves nothing that ties the collection
    to its settings.
    """

    def __init__(
        self,
        collection: CollectionContext,
        store: VectorStore,
        records: Records,
        encoder: LazyEncoder,
        settings: dict[str, str],
        *,
        progress: bool,
        stop: threading.Event,
        workers_upsert: bool = False,
    ) -> None:
        self.collection = collection
        self.target = collection.target
        self.colbert = collection.config.store.colbert
        self.store, self.records, self.encoder, self.settings = store, records, encoder, settings
        self.progress = progress and sys.stderr.isatty()
        self.stop = stop
        self.workers_upsert = workers_upsert
        self.summary = Summary()
        self.writer = Writer(self)
        self.seen: set[str] = set()
        self.kept: list[str] = []
        self._ready = False
        self._ready_lock = threading.Lock()

    def __enter__(self) -> Run:
        from tqdm.auto import tqdm

        self.started = time.perf_counter()
        self.records.reconcile(self.store, self.target)
        self._recover_lost_chunks()
        self.writer.start()
        self.files_bar = tqdm(desc="files", unit="file", disable=not self.progress, position=0)
        self.chunks_bar = tqdm(desc="chunks", unit="chunk", disable=not self.progress, position=1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.files_bar.close()
        self.chunks_bar.close()
        self.writer.finish(raise_error=False)
        self.summary.stopped = self.stop.is_set()
        self.summary.seconds = round(time.perf_counter() - self.started, 3)

    def _recover_lost_chunks(self) -> None:
        """Forget what the records list but the store lost (a deleted store file, a dropped
        collection), so this run writes it again instead of reporting it unchanged."""
        from m3ingest.drift import find_drift

        sources, chunks = self.records.counts()
        if not chunks:
            return
        if not self.store.has_collection(self.target):
            log.warning(
                "collection %r is missing from the store, but the records list %d chunks of %d "
                "files: ingesting them again",
                self.target, chunks, sources,
            )
            self.records.forget_chunks(self.records.chunk_ids())
            return
        if self.store.count(self.target) >= chunks:
            return
        drift = find_drift(self.store, self.target, self.records.chunk_ids())
        lost = sum(len(ids) for ids in drift.missing.values())
        if lost:
            log.warning(
                "the store lost %d recorded chunks of %d files: encoding them again", lost, len(drift.missing)
            )
            self.records.forget_chunks(drift.missing)

    def ensure_collection(self) -> None:
        """Create the collection (or check the existing one's schema) and record the settings
        it is built with; done once, before the first write."""
        with self._ready_lock:
            if self._ready:
                return
            self.store.ensure_collection(self.target, self.encoder.dim, self.colbert)
            self.records.record_settings(self.settings)
            self._ready = True

    def admit(self, item: SourceFile | SourceFailure) -> tuple[SourceFile, SourceRecord | None] | None:
        """Count one walked item; the file and its record when it must be prepared, else None.

        Anything under the roots that exists but cannot be read keeps what the store holds for it.
        """
        from m3ingest.sources import SourceFailure

        self.summary.files_seen += 1
        if isinstance(item, SourceFailure):
            self.kept.append(item.source_id)
            self.files_bar.update(1)
            self.summary.fail(str(item.path), item.reason)
            return None
        if item.source_id in self.seen:
            self.files_bar.update(1)
            self.summary.fail(str(item.path), f"another ingest root already has a file {item.source_id}")
            return None
        self.seen.add(item.source_id)
        held = self.records.get(item.source_id)
        if unchanged(held, item):
            self.summary.files_unchanged += 1
            self.files_bar.update(1)
            return None
        return item, held

    def start(self, result: Prepared) -> Plan | None:
        """Count a prepared file and queue its intent and rewrites (and its commit when nothing is
        left to encode); returns the plan when it has chunks to encode, to commit after them."""
        self.files_bar.update(1)
        if isinstance(result, Failed):
            self.summary.fail(result.path, result.reason)
            self.writer.put(Abandon(result.source_id))
            return None
        if isinstance(result, Unchanged):
            self.summary.files_unchanged += 1
            self.writer.put(Touch(result.file))
            return None
        plan = result
        if plan.is_new:
            self.summary.files_new += 1
        else:
            self.summary.files_changed += 1
        self.writer.put(Begin(plan))
        if plan.rewrite:
            self.writer.put(Rewrite(plan))
        if not plan.encode:
            self.writer.put(Commit(plan))
            return None
        return plan

    def end(self, delete: bool) -> None:
        """Remove the files no longer there (with ``delete``), wait for every write, flush."""
        if delete and not self.stop.is_set():
            for record in self.records.all():
                if record.source_id not in self.seen and not _kept(record.source_id, self.kept):
                    self.writer.put(Remove(record))
        self.writer.finish()
        if self.summary.chunks_written or self.summary.chunks_deleted:
            self.store.flush(self.target)  # Milvus searches unflushed rows by brute force


def _kept(source_id: str, failed: list[str]) -> bool:
    """Whether a source is, or lies under, an entry the walk could not read (its chunks stay)."""
    return any(
        f in ("", ".") or source_id == f or source_id.startswith(f.rstrip("/") + "/") for f in failed
    )
