"""Ingest throughput of the Ray executor with 1 and 2 CPU encoder actors against the local executor.

    python bench/ray.py                                # 40 Python doc sources, small random model
    python bench/ray.py --files 400 --model BAAI/bge-m3 --out bench/results/ray-cpu.json

Each run ingests the same folder into a fresh Milvus Lite file, in one process: first the local
executor, then ``--executor ray`` with 1 and with 2 encoder actors on a local Ray runtime (each
actor holds one model and gets one CPU, so Ray limits its torch threads to one). Reported per
run: wall seconds (Ray's include starting the actors and loading their models), chunks/s and
tokens/s, and that all runs wrote the same number of chunks. The default model is a randomly
initialised checkpoint in the BGE-M3 layout (4 layers, hidden 256) built from the tiny test
checkpoint's tokenizer, so the bench needs no download; ``--model`` takes any checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# This script is named like the library it measures: keep its folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import m3ingest  # noqa: E402
from m3ingest.config import Config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-m3"
DOCS = Path("/usr/share/doc/python3.11-doc/html/_sources")


def corpus(folder: Path, files: int) -> None:
    """Copy ``files`` real text files: the Python docs' reST sources, else this repo's docs."""
    found = sorted(DOCS.rglob("*.rst.txt")) if DOCS.is_dir() else []
    found = found or sorted((ROOT / "docs").glob("*.md"))
    if len(found) < files:
        raise SystemExit(f"only {len(found)} files found; install python3-doc or lower --files")
    for i, src in enumerate(found[:files]):
        shutil.copy(src, folder / f"{i:05d}-{src.name}")


def config(tmp: Path, name: str, model: str, executor: dict) -> Config:
    return Config.model_validate(
        {
            "store": {"uri": str(tmp / name / "m3.db"), "collection": "bench"},
            "model": {"name": model, "device": "cpu", "dtype": "float32"},
            "executor": executor,
        }
    )


def measure(folder: Path, cfg: Config) -> dict:
    (Path(cfg.store.uri).parent).mkdir(parents=True)
    started = time.perf_counter()
    summary = m3ingest.ingest(folder, cfg)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "files": summary.files_new,
        "chunks": summary.chunks_written,
        "tokens": summary.tokens_encoded,
        "chunks_per_s": round(summary.chunks_written / seconds, 1),
        "tokens_per_s": round(summary.tokens_encoded / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--model", help="checkpoint (default: a small random one)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "docs"
        folder.mkdir()
        corpus(folder, args.files)
        model = args.model
        if model is None:
            from m3ingest.encoder.random_checkpoint import build_random_checkpoint

            model = str(build_random_checkpoint(tmp / "model", TINY, layers=4, hidden=256))

        runs = {"local": measure(folder, config(tmp, "local", model, {"kind": "local"}))}
        # Logical CPUs: one per encoder actor plus room for the prepare tasks.
        ray.init(
            num_cpus=max(args.actors) + 2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        try:
            for n in args.actors:
                executor = {"kind": "ray", "encoders": n, "encoder_cpus": 1}
                runs[f"ray-{n}"] = measure(folder, config(tmp, f"ray{n}", model, executor))
        finally:
            ray.shutdown()

    chunks = {r["chunks"] for r in runs.values()}
    result = {
        "model": args.model or "random BGE-M3 layout, 4 layers, hidden 256",
        "files": args.files,
        "cpu_cores": os.cpu_count(),
        "same_chunks": len(chunks) == 1,
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
