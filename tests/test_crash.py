"""kill -9 at many points of a sync, then a normal re-run: the store equals a clean ingestion.

Each chain starts from an empty store or from the first version of a folder already ingested,
changes the folder (an edited file, a replaced file, a removed file, a new file), then runs
``m3ingest sync`` in a subprocess that SIGKILLs itself at a named point (``M3INGEST_CRASH_AT``,
see ``m3ingest/faults.py``), possibly several times in a row at different points, and finally
once normally. The store is then compared with a clean ingestion of the same folder into a fresh
store: the same chunk ids per source, the same texts, offsets, metadata and vectors.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m3ingest.connectors import RetryPolicy, VectorStore, open_store

ROOT = Path(__file__).parent
TINY = ROOT / "fixtures" / "tiny-m3"
COLLECTION = "crash"

PARAGRAPHS = [
    "Checkpoints are written before each step so that the job can resume after a failure.",
    "The quick brown fox jumps over the lazy dog while the operator watches the logs.",
    "Vector stores keep dense and sparse vectors side by side for hybrid retrieval.",
    "A scheduler wakes up at night, takes the lock and synchronises the folder.",
    "Records map every source to the content hash and the chunk ids it produced.",
    "When a file disappears, its chunks must disappear from the store as well.",
]


def text(seed: int, paragraphs: int) -> str:
    parts = [f"# Section {seed}"]
    for i in range(paragraphs):
        parts.append(f"{PARAGRAPHS[(seed + i) % len(PARAGRAPHS)]} Note {seed}-{i}.")
    return "\n\n".join(parts) + "\n"


#: Files of the first version and their sizes in paragraphs: enough text for several encoder
#: batches (a batch gathers at least 8192 tokens) and many chunks per file.
V1_FILES = {
    "edited.md": 60,
    "replaced.md": 45,
    "removed.md": 50,
    "same1.md": 70,
    "same2.md": 40,
    "small.md": 2,
    "sub/nested.md": 55,
}


def write_v1(folder: Path) -> None:
    for i, (name, paragraphs) in enumerate(V1_FILES.items()):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text(i, paragraphs))


def change_to_v2(folder: Path) -> None:
    edited = (folder / "edited.md").read_text().split("\n\n")
    edited[30] = "This paragraph was rewritten between the runs, so the chunks around it change."
    (folder / "edited.md").write_text("\n\n".join(edited))
    (folder / "replaced.md").write_text(text(20, 45))
    (folder / "removed.md").unlink()
    (folder / "added.md").write_text(text(30, 50))


def write_config(case: Path, backend: str) -> Path:
    uri = "store/m3.db" if backend == "milvus" else "store/qdrant"
    config = case / "m3ingest.toml"
    config.write_text(
        f"""
[store]
backend = "{backend}"
uri = "{uri}"
collection = "{COLLECTION}"

[model]
name = "{TINY.as_posix()}"
device = "cpu"
dtype = "float32"
batch_tokens = 2048

[chunking]
chunk_size = 48
overlap = 8
"""
    )
    return config


def sync(case: Path, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "M3INGEST_CRASH_AT"}
    if crash_at:
        env["M3INGEST_CRASH_AT"] = crash_at
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from m3ingest.cli import main; main()",
            "sync",
            "docs",
            "--config",
            "m3ingest.toml",
            "--quiet",
        ],
        cwd=case,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def open_case_store(case: Path, backend: str) -> VectorStore:
    uri = str(case / ("store/m3.db" if backend == "milvus" else "store/qdrant"))
    return open_store(backend, uri, retry_policy=RetryPolicy(attempts=1))


def snapshot(case: Path, backend: str) -> dict[str, dict[str, tuple]]:
    """source -> chunk id -> (payload, dense, sparse) of everything the store holds."""
    with open_case_store(case, backend) as store:
        if not store.has_collection(COLLECTION):
            return {}
        out: dict[str, dict[str, tuple]] = {}
        for source, ids in store.ids_by_source(COLLECTION).items():
            chunks = store.get(COLLECTION, sorted(ids), with_vectors=True)
            assert len(chunks) == len(ids)
            out[source] = {
                c.id: (
                    (c.text, c.chunk_index, c.start, c.end, c.content_hash, c.metadata),
                    c.dense,
                    c.sparse,
                )
                for c in chunks
            }
        return out


def assert_same_store(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want), "sources differ"
    for source in want:
        assert sorted(got[source]) == sorted(want[source]), f"chunk ids of {source} differ"
        for cid, (payload, dense, sparse) in want[source].items():
            g_payload, g_dense, g_sparse = got[source][cid]
            assert g_payload == payload, f"{source} chunk {cid}"
            np.testing.assert_allclose(g_dense, dense, atol=1e-5)
            assert sorted(g_sparse) == sorted(sparse)
            np.testing.assert_allclose(
                [g_sparse[k] for k in sorted(sparse)], [sparse[k] for k in sorted(sparse)], atol=1e-5
            )


def new_case(path: Path, backend: str) -> Path:
    path.mkdir(parents=True)
    write_config(path, backend)
    return path


def sync_here(case: Path) -> None:
    """A normal sync in this process (cheaper than a subprocess; the store is closed after)."""
    import m3ingest

    cwd = os.getcwd()
    os.chdir(case)
    try:
        summary = m3ingest.sync(["docs"], "m3ingest.toml")
    finally:
        os.chdir(cwd)
    assert summary.files_failed == 0 and not summary.stopped


@pytest.fixture(scope="module", params=["milvus", "qdrant"])
def backend_cases(request, tmp_path_factory):
    """Per backend: the v1 state (folder + store + records) and the clean ingestion of v2."""
    backend = request.param
    base = tmp_path_factory.mktemp(f"crash-{backend}")
    v1 = new_case(base / "v1", backend)
    write_v1(v1 / "docs")
    sync_here(v1)
    reference = new_case(base / "reference", backend)
    write_v1(reference / "docs")
    change_to_v2(reference / "docs")
    sync_here(reference)
    want = snapshot(reference, backend)
    assert "added.md" in want and "removed.md" not in want and len(want) == len(V1_FILES)
    return backend, v1, want


# Each chain: where it starts, then the crash points of consecutive runs (each must be reached).
# A run from v1 to v2 passes 3 upsert batches, 3 source commits and 1 source deletion; a first
# ingestion of v2 passes 4 upsert batches and 7 source commits.
CHAINS = {
    "first-ingest": ("empty", ["before_upsert:3", "after_upsert:1"]),
    "changes": ("v1", ["after_delete:2", "delete_source:1"]),
    "anywhere": ("v1", ["*:5", "*:3"]),
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_kill_anywhere_then_rerun_equals_clean_ingestion(backend_cases, chain, tmp_path) -> None:
    backend, v1, want = backend_cases
    start, crashes = CHAINS[chain]
    case = tmp_path / "case"
    if start == "v1":
        shutil.copytree(v1, case)
    else:
        new_case(case, backend)
        write_v1(case / "docs")
    change_to_v2(case / "docs")
    for point in crashes:
        result = sync(case, crash_at=point)
        assert result.returncode == -signal.SIGKILL, (
            f"the run was to be killed at {point} but exited {result.returncode}: {result.stderr[-2000:]}"
        )
    sync_here(case)
    assert_same_store(snapshot(case, backend), want)
