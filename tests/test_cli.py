"""The command line end to end on a real folder: ingest, sync, search, stats, drop, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from m3ingest.cli import app
from m3ingest.errors import ExitCode

from ingest_helpers import TINY, paragraphs


@pytest.fixture
def case(tmp_path, monkeypatch) -> Path:
    """A working folder with docs/ and the tiny checkpoint chosen through the environment."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Alpha\n\n" + paragraphs(1, 3))
    (docs / "b.txt").write_text("Milvus and Qdrant keep hybrid vectors.\n\n" + paragraphs(2, 2))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("M3INGEST_MODEL__NAME", str(TINY))
    monkeypatch.setenv("M3INGEST_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("M3INGEST_CHUNKING__CHUNK_SIZE", "32")
    monkeypatch.setenv("M3INGEST_CHUNKING__OVERLAP", "4")
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_ingest_sync_search_stats_drop(case, backend):
    store = ["--backend", backend, "--uri", "m3.db" if backend == "milvus" else "qdrant"]

    first = invoke("ingest", "docs", *store, "--json")
    assert first.exit_code == ExitCode.OK, first.output
    summary = json.loads(first.stdout)
    assert summary["files_new"] == 2 and summary["chunks_written"] > 0

    (case / "docs" / "b.txt").unlink()
    (case / "docs" / "bad.txt").write_bytes(b"")
    synced = invoke("sync", "docs", *store, "--json", "--report", "out/report.json")
    assert synced.exit_code == ExitCode.FILES_FAILED, synced.output
    summary = json.loads(synced.stdout)
    assert summary["files_deleted"] == 1 and summary["files_failed"] == 1
    assert summary["failures"][0]["path"].endswith("bad.txt") and summary["failures"][0]["reason"]
    assert json.loads((case / "out" / "report.json").read_text()) == summary

    found = invoke("search", "Alpha vector store", *store, "-k", "2", "--json")
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert 1 <= len(hits) <= 2 and all(h["metadata"]["source"] == "a.md" for h in hits)

    stats = invoke("stats", *store, "--json")
    assert stats.exit_code == 0, stats.output
    data = json.loads(stats.stdout)
    assert data["sources_recorded"] == 1 and data["chunks_in_store"] == data["chunks_recorded"] > 0

    dropped = invoke("drop", *store, "--yes", "--json")
    assert dropped.exit_code == 0 and json.loads(dropped.stdout)["dropped"] is True
    assert json.loads(invoke("stats", *store, "--json").stdout)["exists"] is False


def test_text_summary_and_unchanged_rerun(case):
    assert invoke("ingest", "docs", "--quiet").exit_code == 0
    again = invoke("ingest", "docs")
    assert again.exit_code == 0
    assert "2 unchanged" in again.stdout and "0 tokens encoded" in again.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "missing"], "missing does not exist"),
        (["ingest", "docs", "--chunk-size", "32", "--overlap", "40"], "overlap"),
        (["ingest", "docs", "--config", "nowhere.toml"], "nowhere.toml does not exist"),
        (["ingest", "docs", "--backend", "oracle"], "backend"),
        (["search", "q", "--filter", "{not json"], "--filter is not valid JSON"),
    ],
)
def test_user_errors_are_one_line(case, args, message):
    result = invoke(*args)
    assert result.exit_code == ExitCode.CONFIG_ERROR
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_config_file_and_secrets(case, monkeypatch):
    monkeypatch.setenv("MY_COLLECTION", "from_env")
    (case / "job.toml").write_text('[store]\nuri = "job.db"\ncollection = "${MY_COLLECTION}"\n')
    result = invoke("ingest", "docs", "--config", "job.toml", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(invoke("stats", "--config", "job.toml", "--json").stdout)
    assert stats["collection"] == "from_env" and stats["chunks_in_store"] > 0
    assert (case / "job.db").exists()


def test_console_entry_point(case):
    result = subprocess.run(
        [sys.executable, "-c", "from m3ingest.cli import main; main()", "ingest", "docs", "--quiet"],
        cwd=case,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (case / "m3ingest.db").exists() and (case / "m3ingest.db.records").is_dir()
