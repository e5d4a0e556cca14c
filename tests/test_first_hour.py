"""A new user's first hour: help that reads well, errors before work, no traps left on disk."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from m3ingest.cli import app
from m3ingest.errors import ExitCode

from ingest_helpers import TINY, paragraphs

COMMANDS = ["ingest", "sync", "search", "stats", "verify", "rebuild", "schedule", "drop"]


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """An empty working folder with docs/ (two files); no model chosen, the hub unreachable."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Alpha\n\n" + paragraphs(1, 3))
    (docs / "report.txt").write_text(paragraphs(2, 2))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("M3INGEST_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("M3INGEST_CHUNKING__CHUNK_SIZE", "32")
    monkeypatch.setenv("M3INGEST_CHUNKING__OVERLAP", "4")
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def made_on_disk(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - {"docs"}


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_real_names_not_type_placeholders(command):
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0
    assert not re.search(r"<\w+(\[\w+\])?>|\{\w+\}", result.output), result.output
    if command in ("ingest", "sync"):
        text = " ".join(result.output.split())
        assert "pip install 'm3ingest[ray]'" in text
        assert "--delete / --no-delete" in text and "PATH..." in text


@pytest.mark.parametrize("command", ["stats", "verify", "drop", "search", "rebuild", "schedule"])
def test_every_command_that_may_encode_takes_the_model_options(command):
    result = invoke(command, "--help")
    assert "--model" in result.output and "--revision" in result.output and "--device" in result.output


def test_a_first_run_whose_model_cannot_be_had_leaves_nothing(folder):
    """The default model is not reachable: the run fails before making anything, and the
    README's next step (a local model folder) then works."""
    failed = invoke("ingest", "docs")
    assert failed.exit_code == ExitCode.CONFIG_ERROR
    assert "--model" in failed.stderr and "Traceback" not in failed.output
    assert made_on_disk(folder) == set()

    ok = invoke("ingest", "docs", "--model", str(TINY), "--json")
    assert ok.exit_code == ExitCode.OK, ok.output
    assert json.loads(ok.stdout)["files_new"] == 2


def test_settings_are_recorded_only_with_the_first_chunks(folder):
    """A run that writes nothing (no file gives a chunk) does not tie the collection to its
    settings: a later run with another chunking is not refused."""
    (folder / "empty").mkdir()
    (folder / "empty" / "blank.txt").write_text("   \n")
    first = invoke("ingest", "empty", "--model", str(TINY), "--chunk-size", "64")
    assert first.exit_code == ExitCode.FILES_FAILED
    second = invoke("ingest", "docs", "--model", str(TINY), "--chunk-size", "32")
    assert second.exit_code == ExitCode.OK, second.output
    third = invoke("ingest", "docs", "--model", str(TINY), "--chunk-size", "48")
    assert third.exit_code == ExitCode.CONFIG_ERROR and "m3ingest rebuild" in third.stderr


def test_read_only_commands_before_any_ingest_create_nothing(folder):
    searched = invoke("search", "alpha", "--model", str(TINY))
    assert searched.exit_code == ExitCode.CONFIG_ERROR
    assert searched.stderr.count("\n") == 1 and "m3ingest ingest" in searched.stderr
    stats = invoke("stats", "--json")
    assert stats.exit_code == ExitCode.OK and json.loads(stats.stdout)["exists"] is False
    verified = invoke("verify")
    assert verified.exit_code == ExitCode.OK
    for backend, uri in (("qdrant", "q"), ("milvus", "other.db")):
        assert invoke("search", "x", "--backend", backend, "--uri", uri).exit_code == ExitCode.CONFIG_ERROR
        assert invoke("stats", "--backend", backend, "--uri", uri).exit_code == ExitCode.OK
    assert made_on_disk(folder) == set()


def test_a_collection_name_that_is_a_path_is_refused_before_any_file(folder):
    for command in (["stats"], ["search", "x"], ["ingest", "docs"], ["drop", "--yes"]):
        result = invoke(*command, "--collection", "../../escaped")
        assert result.exit_code == ExitCode.CONFIG_ERROR
        assert "is not a collection name" in result.stderr
    assert made_on_disk(folder) == set()
    assert not list(folder.parent.parent.glob("escaped*"))


def test_ingest_takes_single_files_as_well_as_folders(folder):
    report = invoke("ingest", "docs/report.txt", "--model", str(TINY), "--uri", "one.db", "--json")
    assert report.exit_code == ExitCode.OK, report.output
    assert json.loads(report.stdout)["files_new"] == 1
    missing = invoke("ingest", "docs/nothing.pdf", "--model", str(TINY))
    assert missing.exit_code == ExitCode.CONFIG_ERROR and "does not exist" in missing.stderr


def test_the_records_folder_is_covered_by_the_gitignore_example():
    gitignore = (Path(__file__).parent.parent / ".gitignore").read_text().split()
    assert "*.db" in gitignore and "*.db.records/" in gitignore


def test_a_signal_while_idle_says_it_stops_now(caplog):
    from m3ingest.scheduler import stop_on_signals

    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="m3ingest.scheduler"):
        with stop_on_signals(stop, busy=lambda: False):
            signal.raise_signal(signal.SIGTERM)
        with stop_on_signals(threading.Event(), busy=lambda: True):
            signal.raise_signal(signal.SIGTERM)
    idle, busy = [r.getMessage() for r in caplog.records]
    assert stop.is_set()
    assert idle == "SIGTERM received: stopping" and "after the current batch" in busy


def test_a_changed_checkpoint_under_the_same_name_is_caught(folder):
    model = folder / "model"
    shutil.copytree(TINY, model)
    assert invoke("ingest", "docs", "--model", str(model)).exit_code == ExitCode.OK
    head = model / "sparse_linear.pt"
    head.write_bytes(head.read_bytes()[:-1] + bytes([head.read_bytes()[-1] ^ 1]))
    (folder / "docs" / "new.md").write_text("# New\n\nA new file.")
    again = invoke("ingest", "docs", "--model", str(model))
    assert again.exit_code == ExitCode.CONFIG_ERROR
    assert "checkpoint: built with" in again.stderr and "m3ingest rebuild" in again.stderr


def test_a_sync_with_nothing_changed_loads_no_model_nor_tokenizer(folder):
    """A scheduled sync over an unchanged folder reads the records and stats the files, nothing
    more: torch and transformers are never imported (checked in a fresh process)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from m3ingest.cli import main\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)\n"
    )

    def sync() -> tuple[dict, list[str]]:
        # In a child process: a Milvus Lite file stays held by the process that opened it.
        done = subprocess.run(
            [sys.executable, "-c", code, "sync", "docs", "--model", str(TINY), "--json"],
            cwd=folder, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == ExitCode.OK, done.stderr
        return json.loads(done.stdout), done.stderr.strip().splitlines()[-1:]

    first, imported = sync()
    assert first["files_new"] == 2 and imported == ["['torch', 'transformers']"]
    again, imported = sync()
    assert again["files_unchanged"] == 2 and again["tokens_encoded"] == 0
    assert imported == ["[]"]


def test_a_model_folder_that_does_not_exist_is_named_as_a_folder(folder):
    """'./bge-m3' before it is downloaded: the folder is missing, not a hub id to fetch."""
    for name in ("./bge-m3", "../models/bge-m3"):
        result = invoke("ingest", "docs", "--model", name)
        assert result.exit_code == ExitCode.CONFIG_ERROR
        assert f"model directory {name!r} does not exist" in result.stderr and "hf download" in result.stderr
    assert made_on_disk(folder) == set()


def test_a_device_this_machine_lacks_is_a_configuration_error(folder):
    import torch

    lacking = ["gpu", "cuda:x"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:1"])
    for device in lacking:
        result = invoke("ingest", "docs", "--model", str(TINY), "--device", device)
        assert result.exit_code == ExitCode.CONFIG_ERROR, (device, result.output)
        assert "--device" in result.stderr and "Traceback" not in result.output
    assert invoke("search", "alpha", "--model", str(TINY), "--device", "gpu").exit_code == ExitCode.CONFIG_ERROR


def test_drop_with_nobody_to_confirm_asks_for_yes(folder):
    assert invoke("ingest", "docs", "--model", str(TINY), "--uri", "one.db").exit_code == ExitCode.OK
    refused = CliRunner().invoke(app, ["drop", "--uri", "one.db"], input="")
    assert refused.exit_code == ExitCode.CONFIG_ERROR and "pass --yes" in refused.stderr
    kept = invoke("stats", "--uri", "one.db", "--json")
    assert json.loads(kept.stdout)["chunks_in_store"] > 0
    declined = CliRunner().invoke(app, ["drop", "--uri", "one.db"], input="n\n")
    assert declined.exit_code == ExitCode.OK
