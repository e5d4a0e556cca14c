"""The local executor's prepare stage in processes and in threads: the same stores, the same
failures, and a stop request honoured inside a file, on real embedded stores."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import m3ingest
from m3ingest.connectors import RetryPolicy, open_store
from m3ingest.encoder import M3Encoder
from m3ingest.errors import ConfigError
from m3ingest.ingest.local import prepare_workers
from m3ingest.records import Records
from m3ingest.sources import Document, register_extractor

from ingest_helpers import TINY, make_config, paragraphs, pdf_bytes, records_path


@pytest.fixture(scope="module")
def encoder() -> M3Encoder:
    return M3Encoder(str(TINY), device="cpu", dtype="float32", batch_tokens=4096)


def write_corpus(folder: Path) -> None:
    """Enough small files for several prepare tasks, a few large ones, and four that fail."""
    folder.mkdir(parents=True)
    for i in range(70):
        (folder / "notes" / f"n{i:02d}.md").parent.mkdir(exist_ok=True)
        (folder / "notes" / f"n{i:02d}.md").write_text(f"# Note {i}\n\n" + paragraphs(i, 2 + i % 3))
    guide = "Guide\n=====\n\n" + paragraphs(100, 40) + "\n\nPart\n----\n\n" + paragraphs(101, 30)
    (folder / "guide.rst").write_text(guide)
    (folder / "long.txt").write_text(paragraphs(200, 150))
    (folder / "page.html").write_text(f"<html><body><h1>Web</h1><p>{paragraphs(300, 3)}</p></body></html>")
    (folder / "paper.pdf").write_bytes(pdf_bytes("A PDF about sparse vectors"))
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.4\n garbage that is no pdf")
    os.mkfifo(folder / "pipe.txt")


def contents(config) -> dict[str, Any]:
    """Everything a run leaves: per source, each chunk's payload and vectors, and the records."""
    with open_store(config.store.backend, config.store.uri, retry_policy=RetryPolicy(attempts=1)) as store:
        name = config.store.collection
        chunks: dict[str, dict[str, tuple]] = {}
        for source, ids in store.ids_by_source(name).items():
            got = store.get(name, sorted(ids), with_vectors=True)
            assert len(got) == len(ids)
            chunks[source] = {
                c.id: ((c.text, c.chunk_index, c.start, c.end, c.content_hash, c.metadata), c.dense, c.sparse)
                for c in got
            }
    with Records(records_path(config)) as records:
        recorded = {r.source_id: (r.size, r.mtime_ns, r.content_hash, r.chunks) for r in records.all()}
        intents = records.intents()
    return {"chunks": chunks, "records": recorded, "intents": intents}


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["records"] == want["records"]
    assert got["intents"] == want["intents"] == {}
    assert sorted(got["chunks"]) == sorted(want["chunks"])
    for source, chunks in want["chunks"].items():
        assert sorted(got["chunks"][source]) == sorted(chunks), f"chunk ids of {source} differ"
        for cid, (payload, dense, sparse) in chunks.items():
            g_payload, g_dense, g_sparse = got["chunks"][source][cid]
            assert g_payload == payload, f"{source} chunk {cid}"
            np.testing.assert_allclose(g_dense, dense, atol=1e-5)
            assert sorted(g_sparse) == sorted(sparse)
            keys = sorted(sparse)
            np.testing.assert_allclose([g_sparse[k] for k in keys], [sparse[k] for k in keys], atol=1e-5)


def failures(summary) -> list[tuple[str, str]]:
    return sorted((Path(f["path"]).name, f["reason"]) for f in summary.failures)


def test_processes_and_threads_make_the_same_store(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    write_corpus(folder)
    runs = {}
    for workers in (0, 2):
        (tmp_path / f"w{workers}").mkdir()
        config = make_config(tmp_path / f"w{workers}", backend)
        config.executor.workers = workers
        summary = m3ingest.ingest(folder, config, encoder=encoder)
        runs[workers] = (summary, contents(config))

    (threads, in_threads), (processes, in_processes) = runs[0], runs[2]
    assert failures(processes) == failures(threads)
    assert [name for name, _ in failures(threads)] == ["binary.txt", "corrupt.pdf", "empty.txt", "pipe.txt"]
    assert all(reason for _, reason in failures(threads))
    assert (processes.files_new, processes.files_failed) == (threads.files_new, threads.files_failed) == (74, 4)
    assert processes.tokens_encoded == threads.tokens_encoded > 0
    assert processes.chunks_written == threads.chunks_written == sum(map(len, in_threads["chunks"].values()))
    assert len(in_threads["chunks"]) == 74
    assert_same(in_processes, in_threads)


class StopAfter:
    """The encoder, with a stop requested once it has encoded ``calls`` batches."""

    def __init__(self, encoder: M3Encoder, stop: threading.Event, calls: int) -> None:
        self._encoder, self._stop, self._left = encoder, stop, calls
        self.tokens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_ids(self, token_ids, **kwargs):
        out = self._encoder.encode_ids(token_ids, **kwargs)
        self.tokens += sum(len(ids) for ids in token_ids)
        self._left -= 1
        if self._left == 0:
            self._stop.set()
        return out


@pytest.mark.parametrize(("backend", "workers"), [("milvus", 0), ("qdrant", 2)])
def test_stop_inside_a_long_file_ends_the_run_there_and_the_next_run_completes_it(tmp_path, encoder, backend, workers):
    folder = tmp_path / "docs"
    folder.mkdir()
    # Seven encoder batches: the walking thread, at most a few batches ahead of the encoder
    # (bounded queues), is still inside this file when the stop comes after the first.
    (folder / "a-long.txt").write_text(paragraphs(1, 800))
    (folder / "b-after.md").write_text("# After\n\n" + paragraphs(2, 3))
    for i in range(64):  # more files than one prepare task takes: workers, when asked for, start
        (folder / f"c-{i:02d}.txt").write_text(f"Small file {i}.")
    clean_config = make_config(tmp_path, backend)
    clean = m3ingest.ingest(folder, clean_config, encoder=encoder)
    long_tokens = clean.tokens_encoded
    assert clean.files_new == 66 and long_tokens > 6 * 8192
    (tmp_path / "run").mkdir()
    config = make_config(tmp_path / "run", backend)
    config.executor.workers = workers

    stop = threading.Event()
    stopping = StopAfter(encoder, stop, calls=1)
    stopped = m3ingest.ingest(folder, config, encoder=stopping, stop=stop)

    assert stopped.stopped
    assert 0 < stopped.tokens_encoded == stopping.tokens < long_tokens
    with Records(records_path(config)) as records:
        assert records.get("a-long.txt") is None and records.get("b-after.md") is None
        assert set(records.intents()) == {"a-long.txt"}
    resumed = m3ingest.ingest(folder, config, encoder=encoder)
    assert not resumed.stopped and resumed.files_new == 66
    assert_same(contents(config), contents(clean_config))


def rows_extractor(path: Path, data: bytes) -> Document:
    """A registered extractor: each comma-separated row becomes a line of text."""
    return Document("\n".join(line.replace(",", " ") for line in data.decode().splitlines()))


@pytest.fixture
def registry(monkeypatch):
    """The extractor registry, restored after the test."""
    from m3ingest.sources import extractors

    monkeypatch.setattr(extractors, "_REGISTRY", dict(extractors._REGISTRY))


def test_prepare_processes_use_the_extractors_registered_here(tmp_path, encoder, registry):
    register_extractor(".csv", rows_extractor)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "table.csv").write_text("name,vector store\nalpha,dense and sparse\n")
    config = make_config(tmp_path, "milvus")
    config.executor.workers = 2
    summary = m3ingest.ingest(folder, config, encoder=encoder)
    assert (summary.files_new, summary.failures) == (1, [])
    texts = [payload[0] for payload, _, _ in contents(config)["chunks"]["table.csv"].values()]
    assert any("name vector store" in t for t in texts) and not any("," in t for t in texts)


def test_an_extractor_processes_cannot_have_means_threads_or_a_config_error(tmp_path, encoder, registry):
    register_extractor(".csv", lambda path, data: rows_extractor(path, data))
    assert prepare_workers(None) == 0
    with pytest.raises(ConfigError, match="registered extractor"):
        prepare_workers(2)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "table.csv").write_text("name,vector store\nalpha,dense and sparse\n")
    summary = m3ingest.ingest(folder, make_config(tmp_path, "milvus"), encoder=encoder)
    assert (summary.files_new, summary.failures) == (1, [])


UNGUARDED = """
import sys

import m3ingest

workers = None if sys.argv[3] == "default" else int(sys.argv[3])
summary = m3ingest.ingest(sys.argv[1], sys.argv[2], workers=workers)
print("files_new", summary.files_new)
"""


def test_a_script_without_a_main_guard_prepares_in_threads_or_is_told_what_to_change(tmp_path):
    """Worker processes import the main script again: one that ingests at its top level would
    ingest again in each of them."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\n" + paragraphs(1, 3))
    config = tmp_path / "m3ingest.toml"
    config.write_text(
        f'[store]\nuri = "{tmp_path / "m3.db"}"\n[model]\nname = "{TINY.as_posix()}"\ndevice = "cpu"\n'
        'dtype = "float32"\n[chunking]\nchunk_size = 24\noverlap = 4\n'
    )
    script = tmp_path / "ingest_docs.py"
    script.write_text(UNGUARDED)

    def run(workers: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), str(folder), str(config), workers],
            capture_output=True, text=True, timeout=300,
        )

    default = run("default")
    assert default.returncode == 0, default.stderr[-3000:]
    assert "files_new 1" in default.stdout
    explicit = run("2")
    assert explicit.returncode != 0
    assert "ConfigError" in explicit.stderr and str(script) in explicit.stderr
    assert 'if __name__ == "__main__":' in explicit.stderr and "executor.workers = 0" in explicit.stderr


def test_a_run_whose_work_fits_one_task_starts_no_worker_processes(tmp_path, encoder, monkeypatch):
    """A sync that finds a few changed files prepares them at once, without starting workers."""
    local = importlib.import_module("m3ingest.ingest.local")

    class NoWorkers(ProcessPoolExecutor):
        def submit(self, *args, **kwargs):
            raise AssertionError("a worker process was asked for")

    monkeypatch.setattr(local, "ProcessPoolExecutor", NoWorkers)
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("a.md", "b.txt", "c.rst"):
        (folder / name).write_text(paragraphs(len(name), 4))
    config = make_config(tmp_path, "milvus")
    config.executor.workers = 2
    summary = m3ingest.ingest(folder, config, encoder=encoder)
    assert (summary.files_new, summary.failures) == (3, [])
    assert sorted(contents(config)["chunks"]) == ["a.md", "b.txt", "c.rst"]
