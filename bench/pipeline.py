"""Tokens/s of the whole ingest against the tokenizer's own, on a real documentation corpus.

    python bench/pipeline.py                        # instant encoder: discarding store, Milvus Lite, Qdrant local
    python bench/pipeline.py --stores discard --modes threads:1,processes:2
    python bench/pipeline.py --tokenizer ./bge-m3   # a real checkpoint's tokenizer (default: see below)
    python bench/pipeline.py --gpu --model ./bge-m3 # CUDA: the real encoder into Milvus Lite, GPU busy via NVML

``m3ingest.ingest(..., encoder=..., store=...)`` runs over a copy of the corpus (bench/chunking.py's
choice: the first of Python's HTML docs, CMake's reST help, Vim's help found on this machine, up
to ``--max-mb`` MB of files) with an instant encoder: an object with the ``M3Encoder`` surface the
pipeline uses (``path``, ``dim``, ``tokenizer``, ``encode_ids``) that returns random unit
vectors and a few sparse weights, so everything but the model is measured, chunking with the
real tokenizer included. Stores: ``discard`` (a ``VectorStore`` that keeps only ids and sources,
so the records and their verification stay consistent), ``milvus`` (a Milvus Lite file) and
``qdrant`` (a Qdrant local folder). Each run starts from an empty store and records; its time is
the whole ``ingest`` call (records opened and reconciled, the final flush included), the store
opened before.

Prepare modes (read, extract, chunk, classify each file): ``threads:N`` is ``workers = 0`` with N
prepare threads (the configuration has no setting for their number; the benchmark sets
``m3ingest.ingest.local.PREPARE_THREADS``); ``threads:1`` is the old-style figure, every file
prepared on one thread; ``processes:N`` is ``workers = N``; ``default`` is what this machine gets
with no setting (``default_workers()``). ``all`` stands for every core.

The tokenizer's own tok/s is measured in the same run over the same files' extracted texts:
``encode`` of each text with its ids and offsets read, on one thread, best of ``--repeat-tokenizer``
(the cost chunking cannot go below), and ``encode_batch`` on every core. Pipeline tok/s count the
same tokens (the texts' own, no special tokens, no overlap), so ratio = tokenizer seconds /
pipeline seconds; the chunks' tokens (``tokens_encoded``: overlap and ``<s>``/``</s>`` included)
are reported beside. Target: the discarding store at >= 60% of the tokenizer's one-thread tok/s.
CPU seconds are reported too, as they depend less on what else the machine runs: this process's
(the benchmark's sampling thread left out) and its children's (the prepare processes, read from
/proc while they live), against the tokenizer's own CPU seconds.

Tokenizer: ``--tokenizer DIR`` (a checkpoint's folder); otherwise one trained here on the corpus
in BGE-M3's layout (bench/chunking.py: 16,000 unigram pieces, nmt_nfkc, about as many characters
per token as the real one) since the real one cannot be downloaded here; ``--tiny`` uses the test
fixture's (225 pieces, under two characters per token: chunks hold a third of the text a real
tokenizer's do, so per-chunk and per-token costs weigh more).

``--gpu``: the real encoder (``--model DIR``; without it a random checkpoint of bge-m3's shape is
built into bench/.cache/ with the tokenizer above) on CUDA, into a Milvus Lite file with the
default prepare mode; NVML (``pip install nvidia-ml-py``) samples GPU utilisation every 100 ms
during the ingest. Reported: the ingest's tok/s (chunk tokens), the encoder alone on the same
batches (recorded during the ingest, encoded again back to back), and the GPU's mean busy
percentage; each also while chunks flow (from the first encoder call to the end of the last: no
start-up, no final flush). Targets: end-to-end >= 70% of encoder-only, GPU busy >= 70%.

One JSON file per run in bench/results/ (``pipeline-<time>.json``, ``pipeline-gpu-<time>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

# Worker processes import this module again (multiprocessing's forkserver): only light imports
# up here, the rest inside functions.
from m3ingest.connectors.base import ChunkRecord, VectorStore  # noqa: E402

TINY = REPO / "tests" / "fixtures" / "tiny-m3"
COLLECTION = "bench"
BGE_M3_DIM = 1024


@dataclass
class Output:
    """What ``encode_ids`` returns, as ``M3Output`` has it (without importing torch)."""

    dense: np.ndarray
    sparse: list[dict[int, float]]
    colbert: list[np.ndarray] | None


class InstantEncoder:
    """The ``M3Encoder`` surface the pipeline uses, with random unit vectors and no model."""

    def __init__(self, path: Path, tokenizer: Any, dim: int = BGE_M3_DIM) -> None:
        self.path, self.tokenizer, self.dim = path, tokenizer, dim
        self._rng = np.random.default_rng(0)

    def encode_ids(
        self, token_ids: Sequence[Sequence[int]], dense: bool = True, sparse: bool = True,
        colbert: bool = False, **_: Any,
    ) -> Output:
        vectors = self._rng.standard_normal((len(token_ids), self.dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        weights = [{int(t): 0.1 * (k + 1) for k, t in enumerate(ids[1:5])} for ids in token_ids]
        return Output(vectors, weights, None)


class DiscardStore(VectorStore):
    """Keeps the ids and sources of what is written, nothing else: records stay verifiable."""

    backend = "discard"

    def __init__(self) -> None:
        self._sources: dict[str, dict[str, str]] = {}

    def ensure_collection(self, collection: str, dim: int, colbert: bool = False) -> None:
        self._sources.setdefault(collection, {})

    def has_collection(self, collection: str) -> bool:
        return collection in self._sources

    def list_collections(self) -> list[str]:
        return list(self._sources)

    def drop_collection(self, collection: str) -> None:
        self._sources.pop(collection, None)

    def upsert(self, collection: str, records: Sequence[ChunkRecord]) -> None:
        held = self._sources[collection]
        for r in records:
            held[r.id] = r.source

    def delete(self, collection: str, ids: Iterable[str]) -> None:
        held = self._sources.get(collection, {})
        for i in ids:
            held.pop(i, None)

    def delete_source(self, collection: str, source: str) -> None:
        self.delete(collection, [i for i, s in self._sources.get(collection, {}).items() if s == source])

    def get(self, collection: str, ids: Sequence[str], with_vectors: bool = False) -> list[ChunkRecord]:
        held = self._sources.get(collection, {})
        return [ChunkRecord(i, "", held[i], 0, 0, 0, "") for i in ids if i in held]

    def count(self, collection: str) -> int:
        return len(self._sources.get(collection, {}))

    def ids_by_source(self, collection: str, source: str | None = None) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for i, s in self._sources.get(collection, {}).items():
            if source is None or s == source:
                out.setdefault(s, set()).add(i)
        return out

    def _search(self, collection: str, query: Any) -> list[Any]:
        return []

    def set_alias(self, alias: str, collection: str) -> None:
        raise NotImplementedError("the discarding store has no aliases")

    def resolve_alias(self, alias: str) -> str | None:
        return None

    def drop_alias(self, alias: str) -> None:
        return None


def cores() -> int:
    return len(os.sched_getaffinity(0))


class ChildrenCPU(threading.Thread):
    """CPU seconds that this process's descendants (the prepare processes, their forkserver, Milvus
    Lite's server) spend from now on, read from /proc every ``interval`` seconds while they live
    (each one's last reading counts), and those of this thread."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self._interval = interval
        self._stop_event = threading.Event()
        self._seconds: dict[int, float] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._sample()
        self._before = dict(self._seconds)
        self.own_cpu = 0.0

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self._sample()
        self.own_cpu = time.thread_time()

    def _sample(self) -> None:
        pids = self._children(os.getpid())
        while pids:
            pid = pids.pop()
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self._seconds[pid] = (int(fields[11]) + int(fields[12])) / self._tick
            pids += self._children(pid)

    @staticmethod
    def _children(pid: int) -> list[int]:
        out = []
        try:
            for task in os.scandir(f"/proc/{pid}/task"):
                with open(f"{task.path}/children") as f:
                    out += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return out

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return sum(t - self._before.get(pid, 0.0) for pid, t in self._seconds.items())


def copy_corpus(src: Path, dest: Path, max_mb: float, copies: int = 1) -> list[Path]:
    """Copy the documents of ``src`` (sorted, up to ``max_mb`` MB of files) ``copies`` times into ``dest``."""
    from m3ingest.sources import supported_suffixes

    suffixes = supported_suffixes()
    files, size = [], 0
    for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in suffixes and p.is_file()):
        if size > max_mb * 2**20:
            break
        files.append(path)
        size += path.stat().st_size
    out = []
    for copy in range(copies):
        for f in files:
            target = dest / f"copy{copy}" / f.relative_to(src) if copies > 1 else dest / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            out.append(target)
    return out


def load_tokenizer(args: argparse.Namespace, corpus: Path, folder: Path) -> tuple[Any, Path, str]:
    """The tokenizer to chunk with, the folder it is saved in, and what it is."""
    from transformers import AutoTokenizer

    if args.tokenizer:
        return AutoTokenizer.from_pretrained(args.tokenizer), args.tokenizer, f"given: {args.tokenizer}"
    if args.tiny:
        return AutoTokenizer.from_pretrained(TINY), TINY, "the test fixture's (tiny-m3: 225 pieces)"
    from chunking import load_documents, trained_tokenizer

    tokenizer = trained_tokenizer([d.text for d in load_documents(corpus, 4.0)])
    # The roles BGE-M3's tokenizer gives its special tokens (a checkpoint built on it needs them).
    roles = {"bos": "<s>", "cls": "<s>", "eos": "</s>", "sep": "</s>", "pad": "<pad>", "unk": "<unk>"}
    for role, token in roles.items():
        setattr(tokenizer, f"{role}_token", token)
    tokenizer.save_pretrained(folder)
    note = "trained here in BGE-M3's layout (16,000 unigram pieces; the real one is not available offline)"
    return tokenizer, folder, note


def extracted_texts(files: list[Path]) -> list[str]:
    from m3ingest.sources import ExtractionError, extract

    texts = []
    for path in files:
        try:
            texts.append(extract(path).text)
        except ExtractionError:
            continue
    return texts


def tokenizer_rates(tokenizer: Any, texts: list[str], repeat: int) -> dict[str, Any]:
    """The fast tokenizer alone over ``texts``: one thread (best of ``repeat``) and every core."""
    backend = tokenizer.backend_tokenizer

    def one_thread() -> int:
        n = 0
        for t in texts:
            e = backend.encode(t, add_special_tokens=False)
            e.offsets  # noqa: B018  (reading them is part of the tokenizer's cost)
            n += len(e.ids)
        return n

    def all_cores() -> int:
        n = 0
        for e in backend.encode_batch(texts, add_special_tokens=False):
            e.offsets  # noqa: B018
            n += len(e.ids)
        return n

    best: dict[str, float] = {}
    cpu = float("inf")
    tokens = 0
    for _ in range(repeat):
        for name, fn in (("one_thread", one_thread), ("all_cores", all_cores)):
            start, start_cpu = time.perf_counter(), time.thread_time()
            tokens = fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
            if name == "one_thread":
                cpu = min(cpu, time.thread_time() - start_cpu)
    return {
        "tokens": tokens,
        "seconds": best,
        "tokens_per_s": {name: tokens / s for name, s in best.items()},
        "one_thread_cpu_seconds": cpu,
    }


@contextmanager
def prepare_mode(mode: str) -> Iterator[dict[str, Any]]:
    """The overrides (and thread count) of a prepare mode: ``default``, ``threads:N``, ``processes:N``."""
    local = import_module("m3ingest.ingest.local")
    if mode == "default":
        yield {}
        return
    kind, _, n = mode.partition(":")
    count = cores() if n == "all" else int(n)
    if kind == "processes":
        yield {"workers": count}
        return
    if kind != "threads":
        raise SystemExit(f"unknown prepare mode {mode!r}: use default, threads:N or processes:N")
    saved = local.PREPARE_THREADS
    local.PREPARE_THREADS = count
    try:
        yield {"workers": 0}
    finally:
        local.PREPARE_THREADS = saved


def describe_default() -> str:
    local = import_module("m3ingest.ingest.local")
    workers = local.prepare_workers(None)
    return f"processes:{workers}" if workers else f"threads:{min(local.PREPARE_THREADS, os.cpu_count() or 2)}"


def open_bench_store(kind: str, work: Path) -> VectorStore:
    from m3ingest.connectors import open_store

    if kind == "discard":
        return DiscardStore()
    return open_store(kind, str(work / ("m3.db" if kind == "milvus" else "qdrant")))


def ingest_once(
    kind: str, mode: str, docs: Path, work: Path, encoder: Any, chunking: Mapping[str, int],
    batch_tokens: int,
) -> dict[str, Any]:
    """One first ingest of ``docs`` into an empty store in ``work`` (a new folder: an embedded
    store keeps serving a path it had open); its time, counts and consistency."""
    import m3ingest
    from m3ingest.config import Config
    from m3ingest.context import CollectionContext
    from m3ingest.records import Records

    work.mkdir(parents=True)
    backend = "qdrant" if kind == "qdrant" else "milvus"
    uri = work / ("qdrant" if kind == "qdrant" else "m3.db")
    with prepare_mode(mode) as overrides:
        config = Config.model_validate(
            {
                "store": {"backend": backend, "uri": str(uri), "collection": COLLECTION},
                "model": {"name": str(encoder.path), "batch_tokens": batch_tokens},
                "chunking": dict(chunking),
                "executor": {"workers": overrides.get("workers")},
            }
        )
        store = open_bench_store(kind, work)
        try:
            load = os.getloadavg()[0]
            children = ChildrenCPU()
            children.start()
            cpu = time.process_time()
            start = time.perf_counter()
            summary = m3ingest.ingest(docs, config, encoder=encoder, store=store)
            seconds = time.perf_counter() - start
            children_cpu = children.stop()
            cpu = time.process_time() - cpu - children.own_cpu
            held = store.ids_by_source(COLLECTION)
        finally:
            store.close()
    records_path = CollectionContext.from_config(config).records_path
    assert records_path is not None
    with Records(records_path) as records:
        recorded = records.chunk_ids()
    return {
        "seconds": seconds,
        "parent_cpu_seconds": cpu,
        "children_cpu_seconds": children_cpu,
        "load_before": load,
        "files_new": summary.files_new,
        "files_failed": summary.files_failed,
        "chunks_written": summary.chunks_written,
        "tokens_encoded": summary.tokens_encoded,
        "store_equals_records": held == recorded,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def cpu_main(args: argparse.Namespace) -> dict[str, Any]:
    from chunking import find_corpus

    corpus, how = (args.corpus, "given") if args.corpus else find_corpus()
    tmp = Path(tempfile.mkdtemp(prefix="m3ingest-pipeline-"))
    try:
        files = copy_corpus(corpus, tmp / "docs", args.max_mb)
        texts = extracted_texts(files)
        tokenizer, tokenizer_dir, tokenizer_note = load_tokenizer(args, corpus, tmp / "tokenizer")
        print(f"corpus {corpus} ({how}): {len(files)} files, {sum(map(len, texts)) / 2**20:.1f} MB of text")
        print(f"tokenizer: {tokenizer_note}")
        rates = tokenizer_rates(tokenizer, texts, args.repeat_tokenizer)
        tokens, one_thread = rates["tokens"], rates["tokens_per_s"]["one_thread"]
        all_cores = rates["tokens_per_s"]["all_cores"]
        print(
            f"tokenizer alone: {tokens:,} tokens, {one_thread:,.0f} tok/s on one thread "
            f"({rates['one_thread_cpu_seconds']:.2f} CPU s), {all_cores:,.0f} on {cores()} cores"
        )
        encoder = InstantEncoder(tokenizer_dir, tokenizer)
        chunking = {"chunk_size": args.chunk_size, "overlap": args.overlap}
        runs: dict[str, dict[str, Any]] = {}
        for kind in args.stores:
            modes = args.modes or (
                ["threads:1", "threads:2", "threads:all", "processes:1", "processes:2", "processes:all", "default"]
                if kind == "discard"
                else ["threads:1", "default"]
            )
            for mode in dict.fromkeys(modes):
                best: dict[str, Any] | None = None
                for _ in range(args.repeat):
                    work = tmp / f"work{len(list(tmp.glob('work*')))}"
                    r = ingest_once(kind, mode, tmp / "docs", work, encoder, chunking, args.batch_tokens)
                    if best is None or r["seconds"] < best["seconds"]:
                        best = r
                assert best is not None
                best["tokens_per_s"] = tokens / best["seconds"]
                best["chunk_tokens_per_s"] = best["tokens_encoded"] / best["seconds"]
                best["vs_tokenizer_one_thread"] = best["tokens_per_s"] / one_thread
                best["cpu_seconds"] = best["parent_cpu_seconds"] + best["children_cpu_seconds"]
                best["cpu_vs_tokenizer"] = rates["one_thread_cpu_seconds"] / best["cpu_seconds"]
                label = f"{kind} {mode}" + (f" (= {describe_default()})" if mode == "default" else "")
                runs[label] = best
                print(
                    f"{label:<34} {best['seconds']:6.2f} s  {best['tokens_per_s']:>9,.0f} tok/s = "
                    f"{best['vs_tokenizer_one_thread']:4.0%} of the tokenizer  (CPU s: parent "
                    f"{best['parent_cpu_seconds']:.2f}, children {best['children_cpu_seconds']:.2f}, "
                    f"{best['cpu_vs_tokenizer']:.0%} of the tokenizer's; load {best['load_before']:.1f}, "
                    f"{best['chunks_written']} chunks, store = records: {best['store_equals_records']})"
                )
        return {
            "corpus": str(corpus),
            "corpus_note": how,
            "files": len(files),
            "characters": sum(map(len, texts)),
            "tokenizer": tokenizer_note,
            "chunk_size": args.chunk_size,
            "overlap": args.overlap,
            "batch_tokens": args.batch_tokens,
            "repeat": args.repeat,
            "tokenizer_alone": rates,
            "runs": runs,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RecordingEncoder:
    """An encoder that keeps the token ids of every call (to encode them again alone) and when
    the first call began and the last one ended."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self.calls: list[list[Sequence[int]]] = []
        self.first = self.last = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_ids(self, token_ids: Sequence[Sequence[int]], **kwargs: Any) -> Any:
        self.first = self.first or time.perf_counter()
        self.calls.append(list(token_ids))
        out = self._encoder.encode_ids(token_ids, **kwargs)
        self.last = time.perf_counter()
        return out


class GpuSampler(threading.Thread):
    """GPU utilisation (NVML's percentage of time a kernel ran) every ``interval`` seconds."""

    def __init__(self, index: int, interval: float = 0.1) -> None:
        import pynvml

        super().__init__(daemon=True)
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._interval = interval
        self._stop_event = threading.Event()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            busy = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            self.samples.append((time.perf_counter(), busy))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def mean(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The mean busy percentage of the samples taken between ``start`` and ``end``."""
        busy = [b for t, b in self.samples if start <= t <= end]
        return float(np.mean(busy)) if busy else float("nan")


def measure_gpu_ingest(
    model: Path, docs: Path, work: Path, *, device: str, chunk_size: int, overlap: int, batch_tokens: int
) -> dict[str, Any]:
    """``m3ingest.ingest`` of ``docs`` with the real encoder of ``model`` on ``device`` into a Milvus
    Lite file under ``work``: its tok/s against the encoder alone on the same batches and, on
    CUDA, the GPU's mean busy percentage sampled through NVML (also used by bench/gpu.py)."""
    import torch

    import m3ingest
    from m3ingest.config import Config
    from m3ingest.connectors import open_store
    from m3ingest.encoder import M3Encoder

    cuda = device.startswith("cuda")
    encoder = M3Encoder(model, device=device, batch_tokens=batch_tokens, warmup=chunk_size + 2 if cuda else False)
    recording = RecordingEncoder(encoder)
    config = Config.model_validate(
        {
            "store": {"backend": "milvus", "uri": str(work / "m3.db"), "collection": COLLECTION},
            "model": {"name": str(model), "batch_tokens": batch_tokens},
            "chunking": {"chunk_size": chunk_size, "overlap": overlap},
        }
    )
    sampler = None
    if cuda:
        import pynvml

        pynvml.nvmlInit()
        index = torch.device(device).index
        sampler = GpuSampler(torch.cuda.current_device() if index is None else index)
    with open_store("milvus", config.store.uri) as store:
        if sampler:
            sampler.start()
        start = time.perf_counter()
        summary = m3ingest.ingest(docs, config, encoder=recording, store=store)
        seconds = time.perf_counter() - start
        if sampler:
            sampler.stop()
    if cuda:
        torch.cuda.synchronize()
    alone_start = time.perf_counter()
    for ids in recording.calls:
        encoder.encode_ids(ids, dense=True, sparse=True)
    if cuda:
        torch.cuda.synchronize()
    encoder_seconds = time.perf_counter() - alone_start
    tokens = sum(len(ids) for call in recording.calls for ids in call)
    end_to_end, alone = summary.tokens_encoded / seconds, tokens / encoder_seconds
    # While chunks flow: from the first encoder call to the end of the last (no start-up or final flush).
    flowing = tokens / (recording.last - recording.first)
    # None where nothing was sampled (not CUDA).
    busy = sampler.mean() if sampler else None
    busy_flowing = sampler.mean(recording.first, recording.last) if sampler else None
    result = {
        "device": torch.cuda.get_device_name(torch.device(device)) if cuda else "CPU",
        "cpus": cores(),
        "default_prepare": describe_default(),
        "files_new": summary.files_new,
        "files_failed": summary.files_failed,
        "chunks": summary.chunks_written,
        "tokens_encoded": summary.tokens_encoded,
        "ingest_seconds": seconds,
        "seconds_before_first_encode": recording.first - start,
        "seconds_after_last_encode": start + seconds - recording.last,
        "end_to_end_tokens_per_s": end_to_end,
        "while_flowing_tokens_per_s": flowing,
        "encoder_only_tokens_per_s": alone,
        "end_to_end_vs_encoder_only": end_to_end / alone,
        "while_flowing_vs_encoder_only": flowing / alone,
        "gpu_busy_mean_percent": busy,
        "gpu_busy_while_flowing_percent": busy_flowing,
        "gpu_samples": len(sampler.samples) if sampler else 0,
        "targets_met": {
            "end_to_end_vs_encoder_only>=0.7": end_to_end / alone >= 0.7,
            "gpu_busy>=70": None if busy is None else busy >= 70,
        },
    }
    gpu = (
        "no GPU sampled" if busy is None or busy_flowing is None
        else f"GPU busy {busy:.0f}% on average ({busy_flowing:.0f}% while chunks flow; {len(sampler.samples)} samples)"
    )
    print(
        f"ingest {end_to_end:,.0f} tok/s ({flowing:,.0f} while chunks flow), encoder alone {alone:,.0f} "
        f"tok/s: {end_to_end / alone:.0%} ({flowing / alone:.0%}); {gpu}",
        flush=True,
    )
    return result


def gpu_main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "--gpu needs a CUDA device, and torch sees none here (torch.cuda.is_available() is "
            "False): run it on a machine with an NVIDIA GPU and a CUDA build of torch"
        )
    try:
        import pynvml  # noqa: F401
    except ImportError:
        raise SystemExit("--gpu samples GPU utilisation through NVML: pip install nvidia-ml-py") from None
    from chunking import find_corpus

    from m3ingest.encoder.random_checkpoint import build_random_checkpoint

    corpus, how = (args.corpus, "given") if args.corpus else find_corpus()
    tmp = Path(tempfile.mkdtemp(prefix="m3ingest-pipeline-gpu-"))
    try:
        files = copy_corpus(corpus, tmp / "docs", args.max_mb, args.copies)
        model, model_note = args.model, f"given: {args.model}"
        if model is None:
            _, tokenizer_dir, note = load_tokenizer(args, corpus, tmp / "tokenizer")
            model = build_random_checkpoint(
                REPO / "bench" / ".cache" / "pipeline-m3-random-L24-H1024", tokenizer_dir,
                layers=24, hidden=1024, heads=16, vocab_size=250002,
            )
            model_note = f"random weights of bge-m3's shape (24 x 1024, 16 heads); tokenizer {note}"
        print(f"corpus {corpus} ({how}) x {args.copies}: {len(files)} files; model: {model_note}")
        measured = measure_gpu_ingest(
            model, tmp / "docs", tmp, device="cuda", chunk_size=args.chunk_size, overlap=args.overlap,
            batch_tokens=args.batch_tokens,
        )
        return {"corpus": str(corpus), "copies": args.copies, "files": len(files), "model": model_note, **measured}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, help="folder of documents (default: bench/chunking.py's choice)")
    p.add_argument("--max-mb", type=float, default=16.0, help="copy files of the corpus up to this many MB")
    p.add_argument("--tokenizer", type=Path, help="a checkpoint folder whose tokenizer chunks")
    p.add_argument("--tiny", action="store_true", help="chunk with the test fixture's tokenizer")
    p.add_argument("--stores", type=lambda s: s.split(","), default=["discard", "milvus", "qdrant"])
    p.add_argument("--modes", type=lambda s: s.split(","), help="prepare modes, e.g. threads:1,processes:all,default")
    p.add_argument("--repeat", type=int, default=2, help="runs per store and mode (the fastest counts)")
    p.add_argument("--repeat-tokenizer", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-tokens", type=int, default=16384, help="[model] batch_tokens")
    p.add_argument("--gpu", action="store_true", help="the real encoder on CUDA into Milvus Lite (see above)")
    p.add_argument("--model", type=Path, help="--gpu: a checkpoint folder in bge-m3's layout")
    p.add_argument("--copies", type=int, default=8, help="--gpu: copies of the corpus, for a run long enough to sample")
    p.add_argument("--json", type=Path, help="where to write the results (default: bench/results/pipeline-<time>.json)")
    args = p.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = gpu_main(args) if args.gpu else cpu_main(args)
    result["machine"] = {"python": platform.python_version(), "cpus": cores(), "load_after": os.getloadavg()[0]}
    out = args.json or REPO / "bench" / "results" / f"pipeline-{'gpu-' if args.gpu else ''}{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
