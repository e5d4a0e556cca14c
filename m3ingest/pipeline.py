"""The concurrent ingest pipeline: walk -> read + extract + chunk -> encode -> write -> record.

Reading, extraction and chunking run on a thread pool; encoding runs on the calling thread in
token-budget batches that span many files; writes to the store and record commits run on one
background thread, in order. Every hand-over is bounded, so memory stays flat however large the
folder.

Per source the writer keeps this order, so a crash at any point can be repaired by
``Records.reconcile``: intent (ids about to be written and deleted) -> upserts -> deletes of
stale ids -> one transaction that replaces the record and clears the intent.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3ingest.errors import ExitCode
from m3ingest.faults import crash_point
from m3ingest.ids import chunk_id, text_hash
from m3ingest.records import Records, SourceRecord

if TYPE_CHECKING:
    from m3ingest.chunking import Chunk, Chunker
    from m3ingest.config import Config
    from m3ingest.connectors import ChunkRecord, VectorStore
    from m3ingest.encoder import M3Encoder
    from m3ingest.sources import SourceFailure, SourceFile

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run did; ``--json`` prints it and ``--report`` writes it."""

    files_seen: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    tokens_encoded: int = 0
    seconds: float = 0.0
    #: True when a stop was requested and the run ended early (records stay consistent).
    stopped: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FILES_FAILED if self.files_failed else ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def fail(self, path: str, reason: str) -> None:
        self.files_failed += 1
        self.failures.append({"path": path, "reason": reason})
        log.warning("skipped %s: %s", path, reason)

    def lines(self) -> list[str]:
        """The human-readable summary."""
        out = [
            f"files: {self.files_seen} seen, {self.files_new} new, {self.files_changed} changed, "
            f"{self.files_unchanged} unchanged, {self.files_deleted} deleted, "
            f"{self.files_failed} failed",
            f"chunks: {self.chunks_written} written, {self.chunks_deleted} deleted; "
            f"{self.tokens_encoded} tokens encoded in {self.seconds:.1f} s",
        ]
        if self.stopped:
            out.append("stopped early on request; the next run continues where this one ended")
        out += [f"failed: {f['path']}: {f['reason']}" for f in self.failures]
        return out


@dataclass
class _Entry:
    """One chunk of a prepared source."""

    id: str
    chunk: "Chunk"
    content_hash: str
    metadata: dict[str, Any]
    signature: str


@dataclass
class _Plan:
    """A changed or new source, extracted and chunked, and what must happen to its chunks."""

    file: "SourceFile"
    content_hash: str
    entries: list[_Entry]
    held: dict[str, str]
    is_new: bool
    encode: list[_Entry] = field(default_factory=list)
    rewrite: list[_Entry] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    pending: int = 0

    def classify(self) -> None:
        """Split the chunks into ones to encode, ones to rewrite, and held ids to delete."""
        ids = {e.id for e in self.entries}
        self.encode = [e for e in self.entries if e.id not in self.held]
        self.rewrite = [
            e for e in self.entries if e.id in self.held and self.held[e.id] != e.signature
        ]
        self.stale = [cid for cid in self.held if cid not in ids]

    def record(self) -> SourceRecord:
        f = self.file
        chunks = {e.id: e.signature for e in self.entries}
        return SourceRecord(f.source_id, f.size, f.mtime_ns, self.content_hash, chunks)


@dataclass
class _Touch:
    """A source whose bytes are unchanged although its size or mtime moved."""

    file: "SourceFile"


@dataclass
class _Failed:
    path: str
    reason: str
    source_id: str


class _Writer(threading.Thread):
    """Applies store writes and record commits in the order they were queued.

    With ``workers_upsert``, other processes (Ray write workers) upsert the encoded chunks and
    the driver announced every source beforehand (``Records.begin_many``); this writer then does
    the rest: rewrites, deletes of replaced chunks and record commits.
    """

    def __init__(
        self,
        store: "VectorStore",
        records: Records,
        collection: str,
        encoder: "M3Encoder",
        colbert: bool,
        summary: Summary,
        workers_upsert: bool = False,
    ) -> None:
        super().__init__(name="m3ingest-writer", daemon=True)
        self.jobs: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self._store, self._records, self._collection = store, records, collection
        self._encoder, self._colbert, self._summary = encoder, colbert, summary
        self._workers_upsert = workers_upsert

    def put(self, kind: str, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.jobs.put((kind, item), timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every queued job is done; re-raise the writer's error."""
        if self.is_alive():
            self.jobs.put(None)
            self.join()
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue
            try:
                getattr(self, f"_{job[0]}")(job[1])
            except BaseException as e:  # handed to the encoding thread, which re-raises it
                self.error = e

    def _begin(self, plan: _Plan) -> None:
        touched: list[str] | None = [e.id for e in plan.encode] + [e.id for e in plan.rewrite]
        if self._workers_upsert and plan.encode:
            touched = None  # written elsewhere: a crash is repaired from what the store holds
        self._records.begin(plan.file.source_id, touched, plan.stale)

    def _abandon(self, source_id: str) -> None:
        if self._workers_upsert:
            self._records.abandon(source_id)

    def _upsert(self, chunks: list["ChunkRecord"]) -> None:
        crash_point("before_upsert")
        self._store.upsert(self._collection, chunks)
        crash_point("after_upsert")
        self._summary.chunks_written += len(chunks)

    def _rewrite(self, plan: _Plan) -> None:
        """Chunks whose text is held but whose payload moved: reuse their stored vectors."""
        wanted = {e.id: e for e in plan.rewrite}
        stored = {
            c.id: c for c in self._store.get(self._collection, list(wanted), with_vectors=True)
        }
        missing = [e for cid, e in wanted.items() if cid not in stored]
        chunks = [
            _with_payload(stored[cid], plan.file.source_id, e)
            for cid, e in wanted.items()
            if cid in stored
        ]
        if missing:
            chunks += _encode(self._encoder, plan.file.source_id, missing, self._colbert)
            self._summary.tokens_encoded += sum(len(e.chunk.token_ids) for e in missing)
        self._upsert(chunks)

    def _acknowledged(self, job: tuple[_Plan, int]) -> None:
        """A source whose new chunks a write worker upserted: count them, then commit."""
        plan, written = job
        self._summary.chunks_written += written
        self._commit(plan)

    def _commit(self, plan: _Plan) -> None:
        if plan.stale:
            self._store.delete(self._collection, plan.stale)
            self._summary.chunks_deleted += len(plan.stale)
        crash_point("after_delete")
        self._records.commit(plan.record())
        crash_point("after_commit")

    def _touch(self, f: "SourceFile") -> None:
        self._records.touch(f.source_id, f.size, f.mtime_ns)

    def _remove(self, record: SourceRecord) -> None:
        ids = record.chunk_ids
        self._records.begin(record.source_id, [], ids)
        crash_point("delete_source")
        if ids:
            self._store.delete(self._collection, ids)
        self._records.remove(record.source_id)
        self._summary.chunks_deleted += len(ids)
        self._summary.files_deleted += 1


def _with_payload(stored: "ChunkRecord", source_id: str, e: _Entry) -> "ChunkRecord":
    stored.source = source_id
    stored.chunk_index = e.chunk.index
    stored.start, stored.end = e.chunk.start, e.chunk.end
    stored.metadata = e.metadata
    return stored


def _encode(
    encoder: "M3Encoder", source_ids: str | Sequence[str], entries: Sequence[_Entry], colbert: bool
) -> list["ChunkRecord"]:
    from m3ingest.connectors import ChunkRecord

    out = encoder.encode_ids(
        [e.chunk.token_ids for e in entries], dense=True, sparse=True, colbert=colbert
    )
    sources = [source_ids] * len(entries) if isinstance(source_ids, str) else source_ids
    assert out.dense is not None and out.sparse is not None
    return [
        ChunkRecord(
            id=e.id,
            text=e.chunk.text,
            source=source,
            chunk_index=e.chunk.index,
            start=e.chunk.start,
            end=e.chunk.end,
            content_hash=e.content_hash,
            metadata=e.metadata,
            dense=out.dense[i],
            sparse=out.sparse[i],
            colbert=out.colbert[i] if colbert and out.colbert is not None else None,
        )
        for i, (e, source) in enumerate(zip(entries, sources))
    ]


def prepare(
    f: "SourceFile", held: SourceRecord | None, config: "Config", chunker: "Chunker"
) -> _Plan | _Touch | _Failed:
    """Read, extract and chunk a new or changed source (both executors run this per file)."""
    from m3ingest.sources import ExtractionError, content_hash, extract, read_bytes

    try:
        data = read_bytes(f.path)
        digest = content_hash(data)
        if held is not None and held.content_hash == digest:
            return _Touch(f)
        doc = extract(f.path, data)
        del data
        chunks = chunker.chunk(doc)
    except ExtractionError as e:
        return _Failed(str(f.path), str(getattr(e, "reason", e)), f.source_id)
    base = {**config.sources.metadata, **doc.metadata}
    seen: dict[str, int] = {}
    entries = []
    for c in chunks:
        h = text_hash(c.text)
        seen[h] = seen.get(h, -1) + 1
        metadata = {**base, "headings": list(c.headings)}
        signature = text_hash(
            json.dumps([c.index, c.start, c.end, metadata], sort_keys=True, default=str)
        )
        cid = chunk_id(config.store.collection, f.source_id, h, seen[h])
        entries.append(_Entry(cid, c, h, metadata, signature))
    return _Plan(f, digest, entries, dict(held.chunks) if held else {}, held is None)


def unchanged(held: SourceRecord | None, f: "SourceFile") -> bool:
    """Whether the records show ``f`` with the same size and mtime: skipped before reading."""
    return (
        held is not None
        and bool(held.content_hash)
        and (held.size, held.mtime_ns) == (f.size, f.mtime_ns)
    )


def start(result: _Plan | _Touch | _Failed, writer: _Writer, summary: Summary) -> _Plan | None:
    """Count a prepared source and queue its intent and rewrites (and its commit when nothing is
    left to encode); returns the plan when it has chunks to encode, to commit after their upsert."""
    if isinstance(result, _Failed):
        summary.fail(result.path, result.reason)
        writer.put("abandon", result.source_id)
        return None
    if isinstance(result, _Touch):
        summary.files_unchanged += 1
        writer.put("touch", result.file)
        return None
    plan = result
    if plan.is_new:
        summary.files_new += 1
    else:
        summary.files_changed += 1
    plan.classify()
    writer.put("begin", plan)
    if plan.rewrite:
        writer.put("rewrite", plan)
    if not plan.encode:
        writer.put("commit", plan)
        return None
    return plan


def removals(
    records: Records, seen: set[str], unreadable: Sequence[str]
) -> Iterable[SourceRecord]:
    """The recorded sources a complete walk no longer found (outside unreadable folders)."""
    return (
        r for r in records.all() if r.source_id not in seen and not _under(r.source_id, unreadable)
    )


class Pipeline:
    """One ingest or sync run of a collection."""

    def __init__(
        self,
        config: "Config",
        store: "VectorStore",
        encoder: "M3Encoder",
        records: Records,
        *,
        progress: bool = True,
        workers: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config, self.store, self.encoder, self.records = config, store, encoder, records
        self.collection = config.store.collection
        self.colbert = config.store.colbert
        self.progress = progress and sys.stderr.isatty()
        self.workers = workers or min(8, (os.cpu_count() or 2))
        self.stop = stop or threading.Event()
        #: Tokens gathered from many files before one call to the encoder.
        self.flush_tokens = max(4 * config.model.batch_tokens, 8192)
        self._local = threading.local()

    # -- worker side ------------------------------------------------------------------------

    def _chunker(self) -> Any:
        chunker = getattr(self._local, "chunker", None)
        if chunker is None:
            from m3ingest.chunking import Chunker

            # A private tokenizer per thread: HF fast tokenizers are not safe to share.
            chunker = Chunker(
                copy.deepcopy(self.encoder.tokenizer),
                chunk_size=self.config.chunking.chunk_size,
                overlap=self.config.chunking.overlap,
            )
            self._local.chunker = chunker
        return chunker

    def _prepare(self, f: "SourceFile", held: SourceRecord | None) -> _Plan | _Touch | _Failed:
        return prepare(f, held, self.config, self._chunker())

    # -- encoding side ----------------------------------------------------------------------

    def run(self, roots: Sequence[str | os.PathLike[str]], delete: bool = False) -> Summary:
        """Ingest ``roots``; with ``delete``, remove the chunks of sources no longer there."""
        from m3ingest.sources import walk

        run = Run(
            self.store, self.records, self.collection, self.encoder, self.colbert,
            self.progress, self.stop,
        )
        summary, writer, started = run.summary, run.writer, run.started
        files_bar, chunks_bar = run.files_bar, run.chunks_bar
        window: deque[Future[_Plan | _Touch | _Failed]] = deque()
        buffer: list[tuple[_Entry, _Plan]] = []
        open_plans: list[_Plan] = []
        buffered_tokens = 0
        walked_all = False

        def flush() -> None:
            nonlocal buffered_tokens
            if not buffer:
                return
            entries = [e for e, _ in buffer]
            records = _encode(
                self.encoder, [p.file.source_id for _, p in buffer], entries, self.colbert
            )
            summary.tokens_encoded += buffered_tokens
            chunks_bar.update(len(records))
            chunks_bar.set_postfix_str(
                f"{summary.tokens_encoded / max(time.perf_counter() - started, 1e-9):,.0f} tok/s"
            )
            writer.put("upsert", records)
            for _, plan in buffer:
                plan.pending -= 1
            buffer.clear()
            buffered_tokens = 0
            for plan in [p for p in open_plans if p.pending == 0]:
                writer.put("commit", plan)
                open_plans.remove(plan)

        def handle(result: _Plan | _Touch | _Failed) -> None:
            nonlocal buffered_tokens
            files_bar.update(1)
            plan = start(result, writer, summary)
            if plan is None:
                return
            plan.pending = len(plan.encode)
            open_plans.append(plan)
            for e in plan.encode:
                buffer.append((e, plan))
                buffered_tokens += len(e.chunk.token_ids)
                if buffered_tokens >= self.flush_tokens:
                    flush()

        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="m3ingest-read") as pool:
                try:
                    for item in walk(
                        [Path(r) for r in roots],
                        include=tuple(self.config.sources.include),
                        exclude=tuple(self.config.sources.exclude),
                        follow_symlinks=self.config.sources.follow_symlinks,
                    ):
                        if self.stop.is_set():
                            break
                        admitted = run.admit(item)
                        if admitted is None:
                            continue
                        window.append(pool.submit(self._prepare, *admitted))
                        while len(window) >= 2 * self.workers or (window and window[0].done()):
                            handle(window.popleft().result())
                    else:
                        walked_all = True
                    while window:
                        handle(window.popleft().result())
                    flush()
                finally:
                    for f in window:
                        f.cancel()
            run.end(delete=delete and walked_all)
        finally:
            run.close()
        return summary


class Run:
    """What one run of either executor holds: the records reconciled and the collection ready,
    the writer thread, the progress bars, the sources seen and the summary."""

    def __init__(
        self,
        store: VectorStore,
        records: Records,
        collection: str,
        encoder: M3Encoder,
        colbert: bool,
        progress: bool,
        stop: threading.Event,
        workers_upsert: bool = False,
    ) -> None:
        from tqdm.auto import tqdm

        self.started = time.perf_counter()
        self.summary = Summary()
        self.store, self.records, self.collection, self.stop = store, records, collection, stop
        records.reconcile(store, collection)
        store.ensure_collection(collection, encoder.dim, colbert)
        self.writer = _Writer(
            store, records, collection, encoder, colbert, self.summary, workers_upsert
        )
        self.writer.start()
        self.files_bar = tqdm(desc="files", unit="file", disable=not progress, position=0)
        self.chunks_bar = tqdm(desc="chunks", unit="chunk", disable=not progress, position=1)
        self.seen: set[str] = set()
        self.unreadable: list[str] = []

    def admit(
        self, item: SourceFile | SourceFailure
    ) -> tuple[SourceFile, SourceRecord | None] | None:
        """Count one walked item; the file and its record when it must be prepared, else None."""
        from m3ingest.sources import SourceFailure

        self.summary.files_seen += 1
        if isinstance(item, SourceFailure):
            self.unreadable.append(item.source_id)
            self.files_bar.update(1)
            self.summary.fail(str(item.path), item.reason)
            return None
        if item.source_id in self.seen:
            self.files_bar.update(1)
            self.summary.fail(
                str(item.path), f"another ingest root already has a file {item.source_id}"
            )
            return None
        self.seen.add(item.source_id)
        held = self.records.get(item.source_id)
        if unchanged(held, item):
            self.summary.files_unchanged += 1
            self.files_bar.update(1)
            return None
        return item, held

    def end(self, delete: bool) -> None:
        """Remove the sources no longer seen (with ``delete``), wait for every write, flush."""
        if delete and not self.stop.is_set():
            for record in removals(self.records, self.seen, self.unreadable):
                self.writer.put("remove", record)
        self.writer.finish()
        if self.summary.chunks_written or self.summary.chunks_deleted:
            self.store.flush(self.collection)  # Milvus searches unflushed rows by brute force

    def close(self) -> None:
        """Close the bars, stop the writer if an error left it running, time the summary."""
        self.files_bar.close()
        self.chunks_bar.close()
        if self.writer.is_alive():
            self.writer.jobs.put(None)
            self.writer.join()
        self.summary.stopped = self.stop.is_set()
        self.summary.seconds = round(time.perf_counter() - self.started, 3)


def _under(source_id: str, folders: Iterable[str]) -> bool:
    """Whether a source lies in a folder the walk could not read (its chunks must be kept)."""
    return any(f in ("", ".") or source_id.startswith(f.rstrip("/") + "/") for f in folders)
