"""One short run on one CUDA GPU, against FlagEmbedding, on a random bge-m3-shaped checkpoint.

    python bench/gpu.py --all           # every section, ~6 minutes on one H100/H200; one JSON in bench/results/
    python bench/gpu.py --sections fixed,chunks   # some sections only
    python bench/gpu.py --smoke         # tiny shapes on CPU: checks that the script runs, measures nothing

The checkpoint has bge-m3's shape (24 layers x 1024 hidden, 16 heads, 250002 vocab; random weights,
the tiny fixture's tokenizer) and is built once into bench/.cache/. M3Encoder runs with its
defaults (dtype auto = fp16, CUDA graphs, the fixed shape grid); FlagEmbedding 1.4.2's
M3Embedder with its own (fp16, batch 256), both asked for dense + sparse. Sections:

  accuracy   fp16 and bf16 against fp32: dense cosine, sparse top-10 tokens, fp16 overflow recomputes
  fixed      texts of exactly 512 and 8192 tokens: tokens/s and model-FLOP utilisation (MFU)
  chunks     an ingest's chunk mix (70% full 512-token chunks, 30% tails of 16-512), max_length 512,
             first and second pass (each over never-seen texts) of both
  firstpass  a fresh encoder's first pass over never-seen chunks against its second pass over
             other never-seen chunks, without and with warmup=512 (load time reported apart)
  execution  eager vs CUDA graphs vs torch.compile vs compile + graphs on the chunk mix
  long       log-normal lengths up to 8192 (median ~700), max_length 8192, as chunks
  ingest     ``m3ingest.ingest`` of a real documentation corpus (bench/chunking.py's choice, copied
             up to ~--ingest-mb MB) into a Milvus Lite file with the default prepare mode: tok/s
             against the encoder alone on the same batches, GPU busy % sampled through NVML
             (bench/pipeline.py --gpu, which has the options, measures the same)

Every run is timed after a CUDA synchronisation, over the whole encode call (tokenizing
included). Each section is written to the JSON as soon as it ends, and a section that fails is
recorded with its error and the run goes on; sections that no longer fit --budget-s are skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from m3bench import (
    TINY_TOKENIZER,
    chunk_mix,
    compare,
    fixed_length_corpus,
    gemm_peak,
    load_m3_embedder,
    long_mix,
    mixed_corpus,
    model_flops,
    time_once,
)

from m3ingest.encoder import M3Encoder
from m3ingest.encoder.random_checkpoint import build_random_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
# Dense fp16/bf16 tensor-core peaks from the vendors' data sheets, FLOP/s.
SPEC_PEAK = {"H200": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}
SECTIONS = ("accuracy", "fixed", "chunks", "firstpass", "ingest", "execution", "long")
# Rough seconds each section needs on an H100/H200 at the default sizes; a section starts only
# if this much of the budget is left.
NEEDS = {"accuracy": 30, "fixed": 60, "chunks": 40, "long": 40, "firstpass": 40, "ingest": 60, "execution": 150}


def spec_peak(name: str) -> float | None:
    for key, value in SPEC_PEAK.items():
        if key in name:
            return value
    return None


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Bench:
    """The shared state of one run: device, checkpoint, budget, the report and its file."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.monotonic()
        if args.smoke:
            self.device = torch.device("cpu")
            self.shape = {"layers": 2, "hidden": 64, "heads": 2, "vocab_size": 250002}
            self.tokens = min(args.tokens, 4096)
        else:
            if not torch.cuda.is_available():
                sys.exit("no CUDA GPU visible to torch; run with --smoke to check the script on CPU")
            self.device = torch.device("cuda")
            self.shape = {"layers": 24, "hidden": 1024, "heads": 16, "vocab_size": 250002}
            self.tokens = args.tokens
        self.name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        self.ckpt = build_random_checkpoint(
            args.cache / f"m3-random-L{self.shape['layers']}-H{self.shape['hidden']}-V{self.shape['vocab_size']}",
            TINY_TOKENIZER,
            **self.shape,
        )
        self.M3Embedder = load_m3_embedder()
        self.report: dict[str, Any] = {
            "device": self.name,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "shape": self.shape,
            "tokens_per_run": self.tokens,
            "sections": {},
        }
        stamp = time.strftime("%Y%m%d-%H%M%S")
        card = "cpu-smoke" if args.smoke else self.name.replace(" ", "-").lower()
        self.path = args.json or RESULTS / f"gpu-{card}-{stamp}.json"
        self.peak = spec_peak(self.name)
        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.ckpt)
        self.config = AutoConfig.from_pretrained(self.ckpt)
        print(f"device: {self.name}; checkpoint {self.ckpt}; writing {self.path}", flush=True)

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def save(self) -> None:
        self.report["elapsed_s"] = time.monotonic() - self.start
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.report, indent=2, default=float))

    def encoder(self, **kwargs: Any) -> M3Encoder:
        return M3Encoder(self.ckpt, device=str(self.device), **kwargs)

    def flag(self) -> Any:
        on_cuda = self.device.type == "cuda"
        return self.M3Embedder(
            str(self.ckpt), use_fp16=on_cuda, devices="cuda:0" if on_cuda else "cpu", passage_max_length=8192
        )

    def rate(self, seconds: float, lengths: list[int]) -> dict[str, float]:
        """tokens/s of a run over inputs of these (truncated) lengths, and its MFU."""
        flops = model_flops(lengths, self.config)
        row = {"seconds": seconds, "tokens_per_s": sum(lengths) / seconds, "tflops": flops / seconds / 1e12}
        if self.peak:
            row["mfu"] = flops / seconds / self.peak
        return row

    def lengths(self, texts: list[str], max_length: int) -> list[int]:
        ids = self.tokenizer(texts, truncation=True, max_length=max_length, verbose=False)["input_ids"]
        return [len(x) for x in ids]


def ours_run(enc: M3Encoder, texts: list[str], max_length: int, device: torch.device) -> float:
    seconds, _ = time_once(lambda: enc.encode(texts, dense=True, sparse=True, max_length=max_length), device)
    return seconds


def flag_run(flag: Any, texts: list[str], max_length: int, device: torch.device) -> float:
    want = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": False}
    seconds, _ = time_once(lambda: flag.encode(texts, max_length=max_length, **want), device)
    return seconds


def show(label: str, row: dict[str, float]) -> None:
    mfu = f" MFU {100 * row['mfu']:.1f}%" if "mfu" in row else ""
    print(f"  {label:<44} {row['tokens_per_s']:10.0f} tok/s {row['tflops']:7.1f} TFLOP/s{mfu}", flush=True)


# --- sections ---------------------------------------------------------------------------------


def accuracy(b: Bench) -> dict[str, Any]:
    """fp16 and bf16 against fp32 on mixed lengths (16 to 8192 tokens)."""
    probe = b.encoder(dtype="float32")
    check = mixed_corpus(96, probe.tokenizer, long_tokens=1500) + long_mix(b.tokens // 8, probe.tokenizer, seed=5)[:32]
    ref = probe.encode(check, max_length=8192)
    del probe
    release()
    out: dict[str, Any] = {"texts": len(check)}
    low = {}
    for dtype in ("float16", "bfloat16"):
        counter = _WarningCounter("float16 overflow")
        enc = b.encoder(dtype=dtype)
        low[dtype] = enc.encode(check, max_length=8192)
        out[dtype] = compare(ref.dense, ref.sparse, low[dtype].dense, low[dtype].sparse)
        out[dtype]["dense_mean_cosine"] = float((ref.dense * low[dtype].dense).sum(1).mean())
        out[dtype]["overflow_recomputes_logged"] = counter.close()
        print(f"  {dtype} vs fp32: {out[dtype]}", flush=True)
        del enc
        release()
    return out


def fixed(b: Bench) -> dict[str, Any]:
    """Texts of exactly 512 and 8192 tokens: tokens/s and MFU, against FlagEmbedding's defaults."""
    out: dict[str, Any] = {}
    lengths = (64, 256) if b.args.smoke else (512, 8192)
    corpora = {n: fixed_length_corpus(max(2, b.tokens // n), b.tokenizer, n) for n in lengths}
    for budget in [int(x) for x in b.args.batch_tokens.split(",")]:
        enc = b.encoder(batch_tokens=budget)
        for n, texts in corpora.items():
            ours_run(enc, texts, n, b.device)  # first pass: shapes' first uses and graph captures
            row = b.rate(ours_run(enc, texts, n, b.device), [n] * len(texts))
            out[f"M3Encoder {n} budget {budget}"] = row
            show(f"M3Encoder {n} tokens (budget {budget})", row)
        del enc
        release()
    if b.M3Embedder is not None:
        flag = b.flag()
        for n, texts in corpora.items():
            flag_run(flag, texts, n, b.device)
            row = b.rate(flag_run(flag, texts, n, b.device), [n] * len(texts))
            out[f"FlagEmbedding {n}"] = row
            show(f"FlagEmbedding {n} tokens (defaults)", row)
            best = max(v["tokens_per_s"] for k, v in out.items() if k.startswith(f"M3Encoder {n} "))
            out[f"ratio {n}"] = best / row["tokens_per_s"]
            print(f"  M3Encoder / FlagEmbedding at {n} tokens: {out[f'ratio {n}']:.2f}x", flush=True)
        del flag
        release()
    return out


def _mix_section(b: Bench, make: Callable[[int], list[str]], max_length: int) -> dict[str, Any]:
    """First and second pass (never-seen texts both times) of M3Encoder and FlagEmbedding, each
    after one call on a two-word text (so that placing the model on the device is not counted)."""
    first, second = make(1), make(2)
    sizes = {k: b.lengths(t, max_length) for k, t in (("first", first), ("second", second))}
    out: dict[str, Any] = {"texts": len(first), "tokens": sum(sizes["first"])}
    enc = b.encoder()
    ours_run(enc, ["warm up"], max_length, b.device)
    for label, texts in (("first", first), ("second", second)):
        row = b.rate(ours_run(enc, texts, max_length, b.device), sizes[label])
        out[f"M3Encoder {label} pass"] = row
        show(f"M3Encoder {label} pass", row)
    del enc
    release()
    if b.M3Embedder is not None:
        flag = b.flag()
        flag_run(flag, ["warm up"], max_length, b.device)
        for label, texts in (("first", first), ("second", second)):
            row = b.rate(flag_run(flag, texts, max_length, b.device), sizes[label])
            out[f"FlagEmbedding {label} pass"] = row
            show(f"FlagEmbedding {label} pass (defaults)", row)
        for label in ("first", "second"):
            ratio = out[f"M3Encoder {label} pass"]["tokens_per_s"] / out[f"FlagEmbedding {label} pass"]["tokens_per_s"]
            out[f"ratio {label} pass"] = ratio
            print(f"  M3Encoder / FlagEmbedding, {label} pass: {ratio:.2f}x", flush=True)
        del flag
        release()
    return out


def chunks(b: Bench) -> dict[str, Any]:
    n = max(8, b.tokens // 400)
    size = 64 if b.args.smoke else 512
    return _mix_section(b, lambda seed: chunk_mix(n, b.tokenizer, seed=seed, size=size), size)


def long(b: Bench) -> dict[str, Any]:
    longest = 512 if b.args.smoke else 8192
    return _mix_section(b, lambda seed: long_mix(b.tokens, b.tokenizer, seed=10 + seed, longest=longest), longest)


def firstpass(b: Bench) -> dict[str, Any]:
    """A fresh encoder's first pass over never-seen chunks against its second pass, with and
    without a warm-up of the grid up to 512 tokens at load."""
    n = max(8, b.tokens // 400)
    size = 64 if b.args.smoke else 512
    out: dict[str, Any] = {}
    for warm in (0, size):
        first, second = (chunk_mix(n, b.tokenizer, seed=20 + 2 * warm + k, size=size) for k in (0, 1))
        start = time.perf_counter()
        enc = b.encoder(warmup=warm or False)
        out[f"load seconds (warmup={warm})"] = time.perf_counter() - start
        rows = {}
        for label, texts in (("first", first), ("second", second)):
            rows[label] = b.rate(ours_run(enc, texts, size, b.device), b.lengths(texts, size))
            show(f"M3Encoder warmup={warm} {label} pass", rows[label])
        out[f"warmup={warm}"] = rows
        out[f"first / second (warmup={warm})"] = rows["first"]["tokens_per_s"] / rows["second"]["tokens_per_s"]
        print(f"  first pass at {out[f'first / second (warmup={warm})']:.2f} of the second (warmup={warm})", flush=True)
        del enc
        release()
    return out


def ingest(b: Bench) -> dict[str, Any]:
    """The whole ingest of a real corpus on this device, against the encoder alone (see bench/pipeline.py)."""
    import shutil
    import tempfile

    from chunking import find_corpus
    from pipeline import copy_corpus, measure_gpu_ingest

    corpus, how = find_corpus()
    size = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
    mb = 0.2 if b.args.smoke else b.args.ingest_mb
    copies = max(1, round(mb * 2**20 / max(size, 1)))
    tmp = Path(tempfile.mkdtemp(prefix="m3ingest-gpu-ingest-"))
    try:
        files = copy_corpus(corpus, tmp / "docs", mb, copies)
        print(f"  corpus {corpus} ({how}) x {copies}: {len(files)} files", flush=True)
        size_chunk = 64 if b.args.smoke else 512
        out = measure_gpu_ingest(
            b.ckpt, tmp / "docs", tmp, device=str(b.device), chunk_size=size_chunk, overlap=size_chunk // 8,
            batch_tokens=16384,
        )
        return {"corpus": str(corpus), "copies": copies, "files": len(files), **out}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        release()


def execution(b: Bench) -> dict[str, Any]:
    """eager, CUDA graphs, torch.compile and compile + graphs on the chunk mix."""
    import torch._dynamo

    n = max(8, b.tokens // 400)
    size = 64 if b.args.smoke else 512
    modes = ["eager", "graphs"] + ([] if b.args.smoke and not b.args.smoke_compile else ["compile", "compile+graphs"])
    out: dict[str, Any] = {}
    for i, mode in enumerate(modes):
        if mode.startswith("compile") and b.left() < 150:
            out[mode] = {"skipped": f"{b.left():.0f} s of the budget left"}
            continue
        first, second = (chunk_mix(n, b.tokenizer, seed=40 + 2 * i + k, size=size) for k in (0, 1))
        start = time.perf_counter()
        enc = b.encoder(execution=mode)
        load = time.perf_counter() - start
        rows = {"load_seconds": load}
        for label, texts in (("first", first), ("second", second)):
            rows[label] = b.rate(ours_run(enc, texts, size, b.device), b.lengths(texts, size))
            show(f"{mode} {label} pass", rows[label])
        out[mode] = rows
        del enc
        release()
        torch._dynamo.reset()
    return out


class _WarningCounter(logging.Handler):
    """Counts the m3ingest.encoder log records containing ``text`` until closed."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text, self.count = text, 0
        logging.getLogger("m3ingest.encoder").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.count += self.text in record.getMessage()

    def close(self) -> int:  # type: ignore[override]
        logging.getLogger("m3ingest.encoder").removeHandler(self)
        super().close()
        return self.count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="every section (the default when --sections is not given)")
    p.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    p.add_argument("--smoke-compile", action="store_true", help="with --smoke, also torch.compile (minutes on a CPU)")
    p.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / ".cache")
    p.add_argument("--tokens", type=int, default=1 << 20, help="tokens per run (per pass of a mix)")
    p.add_argument("--batch-tokens", default="16384,65536", help="M3Encoder budgets tried in 'fixed'")
    p.add_argument("--ingest-mb", type=float, default=4.0, help="MB of documents the 'ingest' section ingests")
    p.add_argument("--budget-s", type=float, default=345.0, help="skip sections that no longer fit this many seconds")
    p.add_argument("--json", type=Path, help="the result file (default bench/results/gpu-<card>-<time>.json)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # Milvus Lite's in-process gRPC server logs each call pymilvus makes that it does not implement.
    logging.getLogger("grpc").setLevel(logging.CRITICAL)
    chosen = SECTIONS if args.all or not args.sections else tuple(s for s in args.sections.split(",") if s)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")

    b = Bench(args)
    if b.device.type == "cuda":
        b.report["peaks"] = {"gemm_fp16": gemm_peak(b.device, torch.float16, size=8192), "spec": b.peak}
        print(f"peaks (TFLOP/s): {', '.join(f'{k} {v / 1e12:.0f}' for k, v in b.report['peaks'].items() if v)}")
    if b.M3Embedder is None:
        print("FlagEmbedding is not installed: `pip install --no-deps FlagEmbedding==1.4.2` to compare")
    functions = {
        "accuracy": accuracy,
        "fixed": fixed,
        "chunks": chunks,
        "long": long,
        "firstpass": firstpass,
        "ingest": ingest,
        "execution": execution,
    }
    for name in chosen:
        need = 0 if args.smoke else NEEDS[name]
        if b.left() < need:
            b.report["sections"][name] = {"skipped": f"{b.left():.0f} s of the budget left, needs ~{need}"}
            print(f"{name}: skipped, {b.left():.0f} s left", flush=True)
            continue
        print(f"{name} ({b.left():.0f} s of the budget left):", flush=True)
        start = time.monotonic()
        try:
            result = functions[name](b)
        except Exception as exc:  # recorded; the other sections still run
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
            release()
        result["section_seconds"] = time.monotonic() - start
        b.report["sections"][name] = result
        b.save()
    b.save()
    print(f"done in {time.monotonic() - b.start:.0f} s: {b.path}", flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
