"""Ingest throughput of the Ray executor with 1 and 2 CPU encoder actors against the local executor.

    python bench/ray.py                                # 40 Python doc sources, small random model
    python bench/ray.py --server                       # also: Ray's write stage into a server
    python bench/ray.py --files 400 --model BAAI/bge-m3 --out bench/results/ray-cpu.json

Each run ingests the same folder into a fresh Milvus Lite file, in one process: first the local
executor, then ``--executor ray`` with 1 and with 2 encoder actors on a local Ray runtime (each
actor holds one model and gets one CPU, so Ray limits its torch threads to one); the Ray runs
write through the driver, as they must for a file. ``--server`` adds two runs into a Milvus Lite
server (``python -m milvus_lite server``, a separate process reached by URI like any Milvus
server): the local executor, and Ray with the most actors whose write actors upsert. Reported per
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
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def config(tmp: Path, name: str, model: str, executor: dict, server: str | None = None) -> Config:
    """A Milvus Lite file under ``tmp/name``, or the collection ``name`` on ``server``."""
    store = {"uri": server, "collection": name} if server else {"uri": str(tmp / name / "m3.db")}
    (tmp / name).mkdir()
    return Config.model_validate(
        {
            "store": {"collection": "bench", **store},
            "model": {"name": model, "device": "cpu", "dtype": "float32"},
            "records": {"path": str(tmp / name)},
            "executor": executor,
        }
    )


@contextmanager
def milvus_server(data: Path) -> Iterator[str]:
    """A Milvus Lite gRPC server in its own process; yields its URI."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure(folder: Path, cfg: Config) -> dict:
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
    parser.add_argument("--server", action="store_true", help="also runs into a Milvus Lite server")
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
            if args.server:
                with milvus_server(tmp / "server") as uri:
                    local = config(tmp, "local_server", model, {"kind": "local"}, uri)
                    runs["local-server"] = measure(folder, local)
                    n = max(args.actors)
                    executor = {"kind": "ray", "encoders": n, "encoder_cpus": 1, "write": "workers"}
                    ray_run = config(tmp, f"ray{n}_server", model, executor, uri)
                    runs[f"ray-{n}-server-workers-write"] = measure(folder, ray_run)
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
