"""The local executor: the ingest stages on this machine, overlapped.

The calling thread walks the roots and hands each new or changed file to the prepare stage
(read, extract, chunk): threads on small machines, processes when there are cores to spare, so
chunking leaves the GIL. Prepared files come back in walk order; their chunks are gathered into
token-budget batches that span many files and queued to an encoder thread; store writes and
record commits run on the writer thread. Every hand-over is bounded, so memory stays flat
however large the folder, and a stop request is honoured between batches, also inside a file.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor as PoolExecutor
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3ingest.ingest.encoding import encode_entries
from m3ingest.ingest.plan import Plan, PlanSettings, Prepared, prepare
from m3ingest.ingest.summary import Summary
from m3ingest.ingest.writer import Commit, Run, Upsert

if TYPE_CHECKING:
    from m3ingest.chunking import Chunker
    from m3ingest.ingest.plan import Entry
    from m3ingest.records import SourceRecord
    from m3ingest.sources import SourceFile

#: Cores kept for the encoder and writer threads before prepare processes are worth starting.
_CORES_KEPT = 2


def default_workers() -> int:
    """Prepare processes when none are configured: one per core beyond ``_CORES_KEPT``; 0 (threads)
    on machines with two cores or fewer, where processes would only compete with the encoder."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(cores - _CORES_KEPT, 0)


@dataclass
class _Batch:
    """Chunks of one or more files, encoded together."""

    entries: list[Entry] = field(default_factory=list)
    #: The file of each entry.
    plans: list[Plan] = field(default_factory=list)
    tokens: int = 0


class LocalExecutor:
    """Runs the stages in threads (and processes) of this machine; see the module docstring."""

    def __init__(self, run: Run, *, workers: int | None = None) -> None:
        config = run.collection.config
        self.run_ = run
        self.config = config
        self.settings = PlanSettings.from_config(config, run.target)
        self.workers = default_workers() if workers is None else workers
        #: Tokens gathered from many files before one call to the encoder.
        self.batch_tokens = max(2 * config.model.batch_tokens, 8192)

    def run(self, roots: Sequence[Path], delete: bool) -> Summary:
        """Ingest ``roots``; with ``delete``, remove the chunks of files no longer there."""
        from m3ingest.sources import walk

        run, stop = self.run_, self.run_.stop
        sources = self.config.sources
        items = walk(
            roots,
            include=tuple(sources.include),
            exclude=tuple(sources.exclude),
            follow_symlinks=sources.follow_symlinks,
            outside_root=sources.follow_links_outside_root,
        )
        encoder = _EncoderThread(run)
        encoder.start()
        walked_all = False
        try:
            with self._pool() as (submit, width):
                window: deque[Future[Prepared]] = deque()
                batch = _Batch()
                for item in items:
                    if stop.is_set():
                        break
                    admitted = run.admit(item)
                    if admitted is None:
                        continue
                    window.append(submit(*admitted))
                    while len(window) >= 2 * width or (window and window[0].done()):
                        batch = self._take(window.popleft().result(), batch, encoder)
                else:
                    walked_all = True
                while window and not stop.is_set():
                    batch = self._take(window.popleft().result(), batch, encoder)
                for f in window:
                    f.cancel()
                encoder.put(batch)
            encoder.finish()
            run.end(delete=delete and walked_all and not stop.is_set())
        finally:
            encoder.finish(raise_error=False)
        return run.summary

    def _take(self, result: Prepared, batch: _Batch, encoder: _EncoderThread) -> _Batch:
        """Add a prepared file's chunks to the batch; queue each batch that is full."""
        plan = self.run_.start(result)
        if plan is None:
            return batch
        encoder.expect(plan)
        for e in plan.encode:
            batch.entries.append(e)
            batch.plans.append(plan)
            batch.tokens += len(e.chunk.token_ids)
            if batch.tokens >= self.batch_tokens:
                encoder.put(batch)
                batch = _Batch()
        return batch

    def _pool(self) -> Any:
        """The prepare stage: ``(submit(file, held) -> Future, width)`` in a context manager."""
        chunking = self.config.chunking
        if self.workers > 0:
            tokenizer = self.run_.encoder.tokenizer
            return _Processes(self.workers, tokenizer, chunking.chunk_size, chunking.overlap, self.settings)
        return _Threads(
            min(8, os.cpu_count() or 2),
            lambda: self.run_.encoder.chunker(chunking.chunk_size, chunking.overlap),
            self.settings,
        )


class _Threads:
    """Prepare in threads, each with its own chunker (tokenizers are not shared by threads)."""

    def __init__(self, width: int, make_chunker: Callable[[], Chunker], settings: PlanSettings) -> None:
        self._width, self._make, self._settings = width, make_chunker, settings
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(width, thread_name_prefix="m3ingest-prepare")

    def __enter__(self) -> tuple[Callable[..., Future[Prepared]], int]:
        return self._submit, self._width

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, f: SourceFile, held: SourceRecord | None) -> Future[Prepared]:
        return self._pool.submit(self._prepare, f, held)

    def _prepare(self, f: SourceFile, held: SourceRecord | None) -> Prepared:
        chunker = getattr(self._local, "chunker", None)
        if chunker is None:
            chunker = self._local.chunker = self._make()
        return prepare(f, held, self._settings, chunker)


_worker_chunker: Chunker | None = None


def _init_worker(tokenizer: Any, chunk_size: int, overlap: int) -> None:
    global _worker_chunker
    from m3ingest.chunking import Chunker

    _worker_chunker = Chunker(tokenizer, chunk_size=chunk_size, overlap=overlap)


def _prepare_in_worker(f: SourceFile, held: SourceRecord | None, settings: PlanSettings) -> Prepared:
    assert _worker_chunker is not None
    return prepare(f, held, settings, _worker_chunker)


class _Processes:
    """Prepare in worker processes, each with its own chunker, so chunking scales with cores."""

    def __init__(
        self, width: int, tokenizer: Any, chunk_size: int, overlap: int, settings: PlanSettings
    ) -> None:
        import multiprocessing

        self._width, self._settings = width, settings
        # forkserver: the parent runs threads (writer, encoder), which fork must not copy.
        context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
        self._pool = ProcessPoolExecutor(
            width, mp_context=context, initializer=_init_worker, initargs=(tokenizer, chunk_size, overlap)
        )

    def __enter__(self) -> tuple[Callable[..., Future[Prepared]], int]:
        return self._submit, self._width

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, f: SourceFile, held: SourceRecord | None) -> Future[Prepared]:
        return self._pool.submit(_prepare_in_worker, f, held, self._settings)


class _EncoderThread(threading.Thread):
    """Encodes queued batches one after another and hands the chunks to the writer; a file is
    committed after its last chunk is written. Stops between batches when asked."""

    def __init__(self, run: Run) -> None:
        super().__init__(name="m3ingest-encoder", daemon=True)
        self._run = run
        self._batches: queue.Queue[_Batch | None] = queue.Queue(maxsize=2)
        self._pending: dict[int, int] = {}
        self.error: BaseException | None = None

    def expect(self, plan: Plan) -> None:
        """Announce a file whose chunks follow in the next batches."""
        self._pending[id(plan)] = len(plan.encode)

    def put(self, batch: _Batch) -> None:
        if not batch.entries:
            return
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._batches.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self, raise_error: bool = True) -> None:
        """Wait for the batches queued so far; re-raise the encoder's error."""
        if self.is_alive():
            self._batches.put(None)
            self.join()
        if raise_error and self.error is not None:
            raise self.error

    def run(self) -> None:
        while True:
            batch = self._batches.get()
            if batch is None:
                return
            if self.error is not None or self._run.stop.is_set():
                continue  # files left half-written keep their intents: the next run repairs them
            try:
                self._encode(batch)
            except BaseException as e:  # handed to the walking thread, which re-raises it
                self.error = e

    def _encode(self, batch: _Batch) -> None:
        run = self._run
        sources = [plan.file.source_id for plan in batch.plans]
        chunks = encode_entries(run.encoder, sources, batch.entries, run.colbert)
        run.summary.tokens_encoded += batch.tokens
        run.chunks_bar.update(len(chunks))
        elapsed = max(time.perf_counter() - run.started, 1e-9)
        run.chunks_bar.set_postfix_str(f"{run.summary.tokens_encoded / elapsed:,.0f} tok/s")
        run.writer.put(Upsert(chunks))
        for plan in batch.plans:
            self._pending[id(plan)] -= 1
            if self._pending[id(plan)] == 0:
                del self._pending[id(plan)]
                run.writer.put(Commit(plan))

