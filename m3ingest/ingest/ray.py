"""The Ray executor: the ingest stages as Ray Data stages, for many GPUs or machines.

The driver (this process) lists the roots in one Ray task and decides from the records which
files are new or changed, exactly as the local executor does. Reading, extraction and chunking
run as Ray tasks (``plan.prepare``); encoding runs in an actor pool with one model per actor
(one actor per GPU, or per CPU worker).

Writing, for a server store: before the dataset runs, the driver announces every file it hands
out (``Records.begin_many``: new chunks of these files may appear in the store); a pool of write
actors upserts the encoded chunks in batches; each file comes back to the driver only once the
store acknowledged its chunks, and the driver's writer thread then deletes its replaced chunks
and commits its record. A crash anywhere leaves announced files, which ``Records.reconcile``
repairs from what the store holds. For an embedded store, which only one process may open (a
Milvus Lite file, a Qdrant local folder), the encoded chunks stream back to the driver, whose
writer thread upserts them as in a local run. Chunk ids come from content, so a retried task or
a restarted actor writes the same ids again.

Fault injection: ``M3INGEST_CRASH_AT`` (see ``m3ingest.faults``) reaches the actors, whose points
are ``encode_batch`` and ``store_write``. Ray is imported only here (the ``m3ingest[ray]`` extra).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from m3ingest.config import Config, ModelConfig, StoreConfig
from m3ingest.errors import ConfigError, ExitCode, M3IngestError
from m3ingest.faults import ENV as CRASH_ENV
from m3ingest.faults import crash_point
from m3ingest.ingest.encoding import LazyEncoder, encode_entries
from m3ingest.ingest.plan import Plan, PlanSettings, prepare
from m3ingest.ingest.summary import Summary
from m3ingest.ingest.writer import Commit, Run, Upsert, Written

if TYPE_CHECKING:
    from m3ingest.chunking import Chunker
    from m3ingest.connectors import ChunkRecord
    from m3ingest.sources import SourceFailure, SourceFile

log = logging.getLogger("m3ingest.ingest")

#: Encoded chunks gathered from several files before one upsert.
WRITE_CHUNKS = 512
#: Memory reserved per prepare task (bytes).
PREPARE_MEMORY = 512 * 2**20
#: CPUs reserved per write actor: none, as it mostly waits on the store. Any reservation would
#: keep a 2-core machine's prepare tasks (1 CPU each) from running beside one encoder actor.
WRITER_CPUS = 0


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("executor 'ray' needs Ray Data: pip install 'm3ingest[ray]'") from None
    return ray


def workers_write(config: Config) -> bool:
    """Whether the write stage runs on Ray workers (``executor.write``) for this store."""
    from m3ingest.connectors import parse_location

    mode, location = config.executor.write, parse_location(config.store.uri)
    if mode == "workers" and location.kind != "server":
        raise ConfigError(
            f"executor.write = 'workers' needs a server store, but store.uri {config.store.uri!r} is an"
            " embedded engine that only one process may open; use a Milvus or Qdrant server"
            " (http://host:19530, http://host:6333) or executor.write = 'driver'"
        )
    return mode == "workers" or (mode == "auto" and location.kind == "server")


# -- stages run by Ray workers ----------------------------------------------------------------


def _list(roots: list[str], config: Config) -> list[SourceFile | SourceFailure]:
    """Listing task: the walk of the roots, files and failures in order."""
    from m3ingest.sources import walk

    s = config.sources
    return list(
        walk(
            [Path(r) for r in roots],
            include=tuple(s.include),
            exclude=tuple(s.exclude),
            follow_symlinks=s.follow_symlinks,
            outside_root=s.follow_links_outside_root,
        )
    )


@functools.lru_cache(maxsize=2)
def _chunker(model: str, chunk_size: int, overlap: int) -> Chunker:
    """One chunker per worker process and settings (a tokenizer, never the model weights);
    ``model`` is the ``[model]`` section as JSON."""
    return LazyEncoder(ModelConfig.model_validate_json(model)).chunker(chunk_size, overlap)


def _prepare_row(row: dict[str, Any], config: Config, settings: PlanSettings) -> dict[str, Any]:
    """Prepare task: read, extract and chunk one file, and classify its chunks."""
    c = config.chunking
    chunker = _chunker(config.model.model_dump_json(), c.chunk_size, c.overlap)
    return {"result": prepare(row["file"], row["held"], settings, chunker)}


class _Encoder:
    """Encoder actor: one model, loaded once, encodes the chunks of a batch of prepared files."""

    def __init__(self, config: Config) -> None:
        self.encoder = LazyEncoder(config.model, longest=config.chunking.chunk_size + 2).encoder
        self.colbert = config.store.colbert

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crash_point("encode_batch")
        results = list(batch["result"])
        plans = [r for r in results if isinstance(r, Plan)]
        entries = [e for p in plans for e in p.encode]
        sources = [p.file.source_id for p in plans for _ in p.encode]
        encoded = iter(encode_entries(self.encoder, sources, entries, self.colbert) if entries else [])
        chunks = np.empty(len(results), dtype=object)
        for i, r in enumerate(results):
            chunks[i] = [next(encoded) for _ in r.encode] if isinstance(r, Plan) else []
        return {"result": batch["result"], "chunks": chunks}


class _StoreWriter:
    """Write actor: upserts the encoded chunks of a batch of files into a server store; a file
    reaches the driver only after the store acknowledged its chunks."""

    def __init__(self, store: StoreConfig) -> None:
        from m3ingest.connectors import store_from_config

        self.store = store_from_config(store)
        self.collection = store.collection

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crash_point("store_write")
        chunks = [c for file_chunks in batch["chunks"] for c in file_chunks]
        if chunks:
            self.store.upsert(self.collection, chunks)
        written = np.array([len(c) for c in batch["chunks"]], dtype=np.int64)
        return {"result": batch["result"], "written": written}


def _actors_that_fit(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """How many encoder actors of ``cpus`` CPUs and ``gpus`` GPUs the cluster can host now, one
    CPU kept for the prepare tasks."""
    fit = int(max(resources.get("CPU", 0) - 1, 0) // cpus) if cpus else 1 << 30
    if gpus:
        fit = min(fit, int(resources.get("GPU", 0) // gpus))
    return fit


def _worker_config(config: Config, collection: str) -> Config:
    """The configuration handed to Ray workers: no store address or credentials."""
    store = StoreConfig(backend=config.store.backend, collection=collection)
    return config.model_copy(update={"store": store})


# -- the driver -------------------------------------------------------------------------------


class RayExecutor:
    """Runs the stages on Ray; the same results as ``LocalExecutor``."""

    def __init__(self, run: Run) -> None:
        self.run_ = run
        self.config = run.collection.config

    def run(self, roots: Sequence[Path], delete: bool) -> Summary:
        """Ingest ``roots``; with ``delete``, remove the chunks of files no longer there."""
        ray = _ray()
        started_ray = not ray.is_initialized()
        if started_ray:
            address = self.config.executor.ray_address
            try:
                ray.init(address=address, configure_logging=False)
            except Exception as e:  # any start failure: one line, and the code of an unreachable service
                where = f"the Ray cluster at {address}" if address else "a local Ray runtime"
                raise M3IngestError(
                    f"cannot start or join {where}: {type(e).__name__}: {e}; check --ray-address "
                    "(executor.ray_address) or run with --executor local",
                    exit_code=ExitCode.STORE_UNAVAILABLE,
                ) from None
        try:
            return self._run(ray, roots, delete)
        finally:
            if started_ray:
                ray.shutdown()

    def _dataset(self, ray: Any, items: list[dict[str, Any]], write: bool) -> Any:
        """Prepare tasks -> encoder actor pool (-> write actor pool), over the files to (re-)process."""
        ex = self.config.executor
        target = self.run_.target
        resources = ray.cluster_resources()
        gpus_in_cluster = int(resources.get("GPU", 0))
        gpus = ex.encoder_gpus if ex.encoder_gpus is not None else (1 if gpus_in_cluster else 0)
        actors = ex.encoders or (max(1, int(gpus_in_cluster / gpus)) if gpus else 1)
        fit = _actors_that_fit(resources, ex.encoder_cpus, gpus)
        if actors > fit:
            # A fixed pool larger than the cluster would wait for resources forever, silently;
            # the pool starts with what fits and grows if the cluster does (an autoscaler).
            log.warning(
                "the Ray cluster has room for %d encoder actor(s) of %s CPU and %s GPU now; starting with "
                "those, up to executor.encoders = %d as the cluster grows",
                fit, ex.encoder_cpus, gpus, actors,
            )
        worker_config = _worker_config(self.config, target)
        env = {CRASH_ENV: os.environ[CRASH_ENV]} if os.environ.get(CRASH_ENV) else {}
        prepare_args: dict[str, Any] = {}
        restarts: dict[str, int] = {}
        if ex.retries is not None:  # else Ray Data's defaults: actors restarted, tasks retried
            prepare_args["max_retries"] = ex.retries
            restarts = {"max_restarts": ex.retries, "max_task_retries": ex.retries}
        if ex.prepare_tasks:
            prepare_args["compute"] = ray.data.TaskPoolStrategy(size=ex.prepare_tasks)
        runtime_env = {"env_vars": env} if env else None
        dataset = (
            ray.data.from_items(items)
            .map(
                _prepare_row,
                fn_kwargs={"config": worker_config, "settings": PlanSettings.from_config(self.config, target)},
                num_cpus=1,
                # A file is extracted whole; the reservation also keeps Ray Data from fusing
                # this stage into the encoder actors (it fuses stages with equal resources).
                memory=PREPARE_MEMORY,
                **prepare_args,
            )
            .map_batches(
                _Encoder,
                fn_constructor_kwargs={"config": worker_config},
                batch_size=ex.batch_files,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=min(actors, max(fit, 1)), max_size=actors),
                num_gpus=gpus,
                num_cpus=ex.encoder_cpus,
                runtime_env=runtime_env,
                **restarts,
            )
        )
        if not write:
            return dataset
        store = self.config.store.model_copy(update={"collection": target})
        return dataset.map_batches(
            _StoreWriter,
            fn_constructor_kwargs={"store": store},
            batch_size=ex.batch_files,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=ex.writers),
            num_cpus=WRITER_CPUS,
            runtime_env=runtime_env,
            **restarts,
        )

    def _run(self, ray: Any, roots: Sequence[Path], delete: bool) -> Summary:
        run = self.run_
        ray.data.DataContext.get_current().enable_progress_bars = run.progress
        write = run.workers_upsert
        items: list[dict[str, Any]] = []
        pending: list[tuple[Plan, list[ChunkRecord]]] = []

        def flush() -> None:
            if pending:
                run.writer.put(Upsert([c for _, chunks in pending for c in chunks]))
                for plan, _ in pending:
                    run.writer.put(Commit(plan))
                pending.clear()

        retries = self.config.executor.retries
        listing = ray.remote(_list).options(max_retries=3 if retries is None else retries)
        folders = [str(Path(r).absolute()) for r in roots]
        walked = listing.remote(folders, _worker_config(self.config, run.target))
        for item in ray.get(walked):
            admitted = run.admit(item)
            if admitted is not None:
                items.append({"file": admitted[0], "held": admitted[1]})
        if write and items:  # before any worker can write one of their chunks
            run.ensure_collection()
            run.records.begin_many(item["file"].source_id for item in items)
        dataset = self._dataset(ray, items, write) if items else None
        batches = dataset.iter_batches(batch_size=None, batch_format="numpy") if dataset else ()
        for batch in batches:
            # Per file: the chunks acknowledged by a write actor, or the encoded chunks.
            done = batch["written"] if write else batch["chunks"]
            for result, out in zip(batch["result"], done, strict=True):
                plan = run.start(result)
                if plan is None:
                    continue
                run.summary.tokens_encoded += plan.tokens
                if write:
                    run.chunks_bar.update(int(out))
                    run.writer.put(Written(plan, int(out)))
                    continue
                run.chunks_bar.update(len(out))
                pending.append((plan, out))
                if sum(len(c) for _, c in pending) >= WRITE_CHUNKS:
                    flush()
            if run.stop.is_set():
                break
        flush()
        run.end(delete=delete)
        return run.summary
