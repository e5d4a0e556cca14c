"""The local executor: the ingest stages on this machine, overlapped.

The calling thread walks the roots and hands new or changed files to the prepare stage (read,
extract, chunk, classify), small files together: worker processes from two cores on, so chunking
leaves the GIL (they start from a forkserver and bring back each plan packed, see
``plan.pack``), threads on one core or where processes cannot run (``prepare_workers``). Prepared
files come back in walk order; their chunks are gathered into token-budget batches that span many
files and queued to an encoder thread; store writes and record commits run on the writer thread.
Every hand-over is bounded, so memory stays flat however large the folder, and a stop request is
honoured between batches, also inside a file.
"""

from __future__ import annotations

import ast
import logging
import os
import pickle
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3ingest.errors import ConfigError
from m3ingest.ingest.encoding import encode_entries
from m3ingest.ingest.plan import PackedPlan, Plan, PlanSettings, Prepared, pack, prepare, unpack
from m3ingest.ingest.stage import Stage
from m3ingest.ingest.summary import Summary
from m3ingest.ingest.writer import Commit, Run, Upsert

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from m3ingest.chunking import Chunker
    from m3ingest.ingest.plan import Entry, Failed, Unchanged
    from m3ingest.records import SourceRecord
    from m3ingest.sources import Extractor, SourceFile

log = logging.getLogger("m3ingest.ingest")

#: Cores kept for the encoder and writer threads when there are many.
_CORES_KEPT = 2
#: Prepare threads when ``workers`` is 0: one per core, up to this many.
PREPARE_THREADS = 8
#: Files handed to the prepare stage at once: until they hold this many bytes, or this many files.
_TASK_BYTES = 256 * 1024
_TASK_FILES = 64


def default_workers() -> int:
    """Prepare processes when none are configured: one per core beyond ``_CORES_KEPT`` and at
    least two from two cores on (preparing costs more CPU than anything else in a run, and the
    walking, encoder and writer threads share one GIL); 0 (threads) on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores < 2 else max(cores - _CORES_KEPT, 2)


def prepare_workers(workers: int | None) -> int:
    """The prepare processes of a run (0: threads) given ``executor.workers``.

    Worker processes import the main script again and need every registered extractor. With no
    setting, a run that cannot have processes prepares in threads and says why in the log; a run
    that asks for processes and cannot have them is a ``ConfigError`` saying what to change.
    """
    if workers == 0:
        return 0
    refused = _processes_refused()
    if workers is None:
        workers = default_workers()
        if workers and refused:
            log.info("preparing files in threads: %s", refused)
            return 0
        return workers
    if refused:
        raise ConfigError(
            f"executor.workers = {workers} prepares files in worker processes, but {refused}; "
            "or set executor.workers = 0 to prepare them in threads"
        )
    return workers


def _processes_refused() -> str | None:
    """Why prepare processes cannot run in this program, or None."""
    script = _unguarded_main()
    if script is not None:
        return (
            f"they would run {script} again (multiprocessing imports the main script in each): put "
            'its top-level code under `if __name__ == "__main__":`'
        )
    try:
        pickle.dumps(_registered_extractors())
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        return f"a registered extractor cannot be sent to them ({e}): register a module-level function"
    return None


def _unguarded_main() -> str | None:
    """The main script, if worker processes would run its top level again: multiprocessing's
    forkserver and spawn import ``__main__`` in each worker unless it has no file (an interactive
    session, ``python -c``) or is a package's ``__main__``; harmless when the script keeps its work
    under ``if __name__ == "__main__":`` (as console scripts, pytest and guarded scripts do)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return None
    path = getattr(spec, "origin", None) if name is not None else getattr(main, "__file__", None)
    if not path:
        return None
    try:
        tree = ast.parse(Path(path).read_bytes(), str(path))
    except (OSError, SyntaxError, ValueError):
        return None
    return None if any(_is_main_guard(node) for node in tree.body) else str(path)


def _is_main_guard(node: ast.stmt) -> bool:
    """Whether ``node`` is ``if __name__ == "__main__":`` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = (test.left, test.comparators[0])
    return any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides) and any(
        isinstance(x, ast.Constant) and x.value == "__main__" for x in sides
    )


def _registered_extractors() -> dict[str, Extractor]:
    """The extractor registry as this process has it, built-ins and the ones registered since:
    worker processes register the same."""
    from m3ingest.sources import registered_extractors

    return registered_extractors()


@dataclass
class _Task:
    """Files handed to the prepare stage together: small files share one hand-over."""

    files: list[tuple[SourceFile, SourceRecord | None]] = field(default_factory=list)
    size: int = 0

    def add(self, f: SourceFile, held: SourceRecord | None) -> bool:
        """Add a file; whether the task is now full."""
        self.files.append((f, held))
        self.size += f.size
        return self.size >= _TASK_BYTES or len(self.files) >= _TASK_FILES


@dataclass
class _InFlight:
    """A task's files and what the prepare stage will give back for them, in the same order."""

    files: list[tuple[SourceFile, SourceRecord | None]]
    future: Future[list[Prepared | PackedPlan]]


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
        self.workers = prepare_workers(workers)
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
                window: deque[_InFlight] = deque()
                batch = _Batch()
                task = _Task()
                submitted = False
                for item in items:
                    if stop.is_set():
                        break
                    admitted = run.admit(item)
                    if admitted is None or not task.add(*admitted):
                        continue
                    window.append(_InFlight(task.files, submit(task.files)))
                    submitted = True
                    task = _Task()
                    while window and (len(window) >= 2 * width or window[0].future.done()):
                        batch = self._take(window.popleft(), batch, encoder)
                else:
                    walked_all = True
                    if task.files:
                        # A run whose work fits one task (a few changed files) starts no workers.
                        prepared = submit(task.files) if submitted else self._prepare_here(task.files)
                        window.append(_InFlight(task.files, prepared))
                while window and not stop.is_set():
                    batch = self._take(window.popleft(), batch, encoder)
                for pending in window:
                    pending.future.cancel()
                encoder.put(batch)
            encoder.finish()
            run.end(delete=delete and walked_all and not stop.is_set())
        finally:
            encoder.finish(raise_error=False)
        return run.summary

    def _take(self, task: _InFlight, batch: _Batch, encoder: _EncoderThread) -> _Batch:
        """Add the chunks of a task's prepared files to the batch; queue each batch that is full.
        After a stop request, nothing more is queued (the file being queued stays uncommitted)."""
        stop = self.run_.stop
        for (f, held), result in zip(task.files, task.future.result(), strict=True):
            if stop.is_set():
                break
            plan = self.run_.start(unpack(result, f, held))
            if plan is None:
                continue
            encoder.expect(plan)
            for e in plan.encode:
                batch.entries.append(e)
                batch.plans.append(plan)
                batch.tokens += len(e.chunk.token_ids)
                if batch.tokens >= self.batch_tokens:
                    encoder.put(batch)
                    batch = _Batch()
                    if stop.is_set():
                        break
        return batch

    def _prepare_here(self, files: Files) -> Future[list[Prepared | PackedPlan]]:
        """Prepare ``files`` on this thread."""
        chunking = self.config.chunking
        chunker = self.run_.encoder.chunker(chunking.chunk_size, chunking.overlap)
        done: Future[list[Prepared | PackedPlan]] = Future()
        done.set_result(list(_prepare_all(files, self.settings, chunker)))
        return done

    def _pool(self) -> _OnFirstUse:
        """The prepare stage: ``(submit(files) -> Future, width)`` in a context manager."""
        chunking = self.config.chunking
        if self.workers > 0:
            return _OnFirstUse(
                lambda: _Processes(
                    self.workers,
                    self.run_.encoder.tokenizer.backend_tokenizer,
                    chunking.chunk_size,
                    chunking.overlap,
                    self.settings,
                ),
                self.workers,
            )
        width = min(PREPARE_THREADS, os.cpu_count() or 2)
        return _OnFirstUse(
            lambda: _Threads(width, self.run_.encoder.chunker(chunking.chunk_size, chunking.overlap), self.settings),
            width,
        )


Files = list[tuple["SourceFile", "SourceRecord | None"]]


def _prepare_all(files: Files, settings: PlanSettings, chunker: Chunker) -> list[Prepared]:
    return [prepare(f, held, settings, chunker) for f, held in files]


class _OnFirstUse:
    """A prepare pool started by the first task submitted to it, so that a run with nothing new
    or changed loads no tokenizer (nor torch) and starts no worker."""

    def __init__(self, start: Callable[[], _Threads | _Processes], width: int) -> None:
        self._start, self._width = start, width
        self._pool: _Threads | _Processes | None = None
        self._submit_to: Callable[[Files], Future[Any]] | None = None

    def __enter__(self) -> tuple[Callable[[Files], Future[Any]], int]:
        return self._submit, self._width

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.__exit__(*exc)

    def _submit(self, files: Files) -> Future[Any]:
        if self._submit_to is None:
            pool = self._start()
            self._submit_to, _ = pool.__enter__()
            self._pool = pool
        return self._submit_to(files)


class _Threads:
    """Prepare in threads that share one chunker."""

    def __init__(self, width: int, chunker: Chunker, settings: PlanSettings) -> None:
        self._width, self._chunker, self._settings = width, chunker, settings
        self._pool = ThreadPoolExecutor(width, thread_name_prefix="m3ingest-prepare")

    def __enter__(self) -> tuple[Callable[[Files], Future[list[Prepared]]], int]:
        return self._submit, self._width

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, files: Files) -> Future[list[Prepared]]:
        return self._pool.submit(_prepare_all, files, self._settings, self._chunker)


#: What a prepare process imports: the forkserver loads them before it forks any worker.
_WORKER_MODULES = ("m3ingest.ingest.local", "m3ingest.chunking", "m3ingest.sources")
_worker_chunker: Chunker | None = None


def _init_worker(backend: Tokenizer, chunk_size: int, overlap: int, extractors: dict[str, Extractor]) -> None:
    global _worker_chunker
    from m3ingest.chunking import Chunker
    from m3ingest.sources import register_extractor

    for suffix, func in extractors.items():
        register_extractor(suffix, func)
    _worker_chunker = Chunker(backend, chunk_size=chunk_size, overlap=overlap)


def _prepare_in_worker(files: Files, settings: PlanSettings) -> list[PackedPlan | Unchanged | Failed]:
    assert _worker_chunker is not None
    return [pack(prepare(f, held, settings, _worker_chunker)) for f, held in files]


class _Processes:
    """Prepare in worker processes, each with its own chunker, so chunking scales with cores."""

    def __init__(
        self, width: int, backend: Tokenizer, chunk_size: int, overlap: int, settings: PlanSettings
    ) -> None:
        import multiprocessing
        from multiprocessing.context import BaseContext

        self._width, self._settings = width, settings
        # forkserver: the parent runs threads (writer, encoder), which fork must not copy. The
        # server (one per process, kept for later runs) imports the prepare stage's modules once,
        # so that each worker starts with them loaded.
        context: BaseContext
        if os.name == "posix":
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(_WORKER_MODULES))
        else:
            context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(
            width,
            mp_context=context,
            initializer=_init_worker,
            initargs=(backend, chunk_size, overlap, _registered_extractors()),
        )

    def __enter__(self) -> tuple[Callable[[Files], Future[list[PackedPlan | Unchanged | Failed]]], int]:
        return self._submit, self._width

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, files: Files) -> Future[list[PackedPlan | Unchanged | Failed]]:
        return self._pool.submit(_prepare_in_worker, files, self._settings)


class _EncoderThread(Stage[_Batch]):
    """Encodes queued batches one after another and hands the chunks to the writer; a file is
    committed after its last chunk is written. Stops between batches when asked: files left
    half-written keep their intents, which the next run repairs."""

    def __init__(self, run: Run) -> None:
        super().__init__("m3ingest-encoder", size=2)
        self._run = run
        self._pending: dict[int, int] = {}

    def expect(self, plan: Plan) -> None:
        """Announce a file whose chunks follow in the next batches."""
        self._pending[id(plan)] = len(plan.encode)

    def put(self, batch: _Batch) -> None:
        if batch.entries:
            super().put(batch)

    def skips(self) -> bool:
        return self._run.stop.is_set()

    def apply(self, batch: _Batch) -> None:
        self._encode(batch)

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

