"""Runs that a bad name, an unreadable file, a lost store or a broken file cannot stop or corrupt
(issue 12): each case on real engines, through the library or the command line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

import m3ingest
from m3ingest.cli import app
from m3ingest.connectors import open_store
from m3ingest.encoder import M3Encoder
from m3ingest.errors import ExitCode

from ingest_helpers import TINY, make_config, paragraphs, snapshot


@pytest.fixture(scope="module")
def encoder() -> M3Encoder:
    return M3Encoder(str(TINY), device="cpu", dtype="float32", batch_tokens=256)


def corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["a.md", "b.md", "c.md"]):
        (folder / name).write_text(f"# Part {i}\n\n" + paragraphs(i, 3))
    return folder


def clean(tmp: Path, folder: Path, backend: str, encoder: M3Encoder) -> dict:
    config = make_config(tmp / "clean", backend)
    (tmp / "clean").mkdir(exist_ok=True)
    m3ingest.ingest(folder, config, encoder=encoder)
    return snapshot(config)


def test_a_file_name_that_is_not_utf8_is_ingested_under_an_escaped_id(tmp_path, backend, encoder):
    folder = corpus(tmp_path / "docs")
    with open(os.path.join(os.fsencode(folder), b"m\xffname.md"), "wb") as f:
        f.write(b"# Bytes\n\nA file whose name is not UTF-8.")
    config = make_config(tmp_path, backend)
    first = m3ingest.sync(folder, config, encoder=encoder)
    assert first.files_failed == 0 and first.files_new == 4
    assert "m\\xffname.md" in snapshot(config)
    again = m3ingest.sync(folder, config, encoder=encoder)
    assert again.files_unchanged == 4 and again.files_deleted == 0


def test_files_that_exist_but_cannot_be_read_keep_their_chunks(tmp_path, backend, encoder):
    folder = corpus(tmp_path / "docs")
    config = make_config(tmp_path, backend)
    m3ingest.sync(folder, config, encoder=encoder)
    before = snapshot(config)
    (folder / "b.md").unlink()
    os.mkfifo(folder / "b.md")
    (folder / "c.md").unlink()
    (folder / "c.md").symlink_to(folder / "gone.md")
    summary = m3ingest.sync(folder, config, encoder=encoder)
    assert (summary.files_failed, summary.files_deleted, summary.chunks_deleted) == (2, 0, 0)
    assert snapshot(config) == before
    (folder / "b.md").unlink()
    after = m3ingest.sync(folder, config, encoder=encoder)  # b.md is gone now: its chunks go
    assert after.files_deleted == 1 and set(snapshot(config)) == {"a.md", "c.md"}


def store_path(config) -> Path:
    return Path(config.store.uri)


def sync_in_a_process(folder: Path, config) -> dict:
    """``m3ingest sync`` as its own process (a Milvus Lite file deleted under a live process is
    still served by that process's engine; a scheduled job starts afresh)."""
    (folder.parent / "job.toml").write_text(
        f'[store]\nbackend = "{config.store.backend}"\nuri = "{config.store.uri}"\n'
        f'collection = "{config.store.collection}"\n'
        f'[model]\nname = "{TINY}"\ndevice = "cpu"\ndtype = "float32"\n'
        f"[chunking]\nchunk_size = {config.chunking.chunk_size}\noverlap = {config.chunking.overlap}\n"
        '[sources]\nmetadata = { team = "docs" }\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "m3ingest.cli", "sync", str(folder), "--config", str(folder.parent / "job.toml"),
         "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_store_that_lost_its_collection_is_filled_again(tmp_path, backend, encoder):
    folder = corpus(tmp_path / "docs")
    config = make_config(tmp_path, backend)
    sync_in_a_process(folder, config)
    shutil.rmtree(store_path(config))
    summary = sync_in_a_process(folder, config)
    assert summary["files_unchanged"] == 0 and summary["chunks_written"] > 0
    assert snapshot(config) == clean(tmp_path, folder, backend, encoder)


def test_chunks_the_store_lost_are_encoded_again(tmp_path, backend, encoder):
    folder = corpus(tmp_path / "docs")
    config = make_config(tmp_path, backend)
    m3ingest.sync(folder, config, encoder=encoder)
    held = snapshot(config)
    lost = sorted(held["b.md"])[:2]
    with open_store(backend, config.store.uri) as store:
        store.delete(config.store.collection, lost)
    summary = m3ingest.sync(folder, config, encoder=encoder)
    assert summary.chunks_written == len(lost) and summary.files_changed == 1
    assert snapshot(config) == held


@pytest.fixture
def cli_case(tmp_path, monkeypatch) -> Path:
    docs = corpus(tmp_path / "docs")
    (docs / "new\nline.md").write_text("# Odd\n\nA name with a line break inside.")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("M3INGEST_MODEL__NAME", str(TINY))
    monkeypatch.setenv("M3INGEST_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("M3INGEST_CHUNKING__CHUNK_SIZE", "32")
    monkeypatch.setenv("M3INGEST_CHUNKING__OVERLAP", "4")
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_a_damaged_records_file_is_its_own_exit_code_naming_the_repair(cli_case):
    assert invoke("ingest", "docs", "-q").exit_code == ExitCode.OK
    records = cli_case / "m3ingest.db.records" / "m3ingest.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{records}{suffix}").unlink(missing_ok=True)
    records.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    for command in (["sync", "docs"], ["stats"]):
        result = invoke(*command)
        assert result.exit_code == ExitCode.STATE_BROKEN, result.output
        assert "m3ingest.db.records/m3ingest.sqlite" in result.stderr and "verify --repair" in result.stderr
        assert "Traceback" not in result.output and result.stderr.count("\n") == 1


@pytest.mark.parametrize("kind", ["not utf-8", "a folder"])
def test_a_configuration_that_cannot_be_read_is_a_configuration_error(cli_case, kind):
    path = cli_case / "job.toml"
    if kind == "a folder":
        path.mkdir()
    else:
        path.write_bytes(b'[store]\nuri = "caf\xe9.db"\n')
    result = invoke("stats", "--config", str(path))
    assert result.exit_code == ExitCode.CONFIG_ERROR
    assert str(path) in result.stderr and "Traceback" not in result.output


def test_a_full_disk_under_the_lock_file_is_a_state_error(cli_case, monkeypatch):
    from m3ingest.locking import CollectionLock

    def full(self, **changes):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(CollectionLock, "_write_owner", full)
    result = invoke("sync", "docs")
    assert result.exit_code == ExitCode.STATE_BROKEN
    assert "No space left on device" in result.stderr and "lock file" in result.stderr


def test_a_filter_nested_thousands_deep_is_a_configuration_error(cli_case):
    assert invoke("ingest", "docs", "-q").exit_code == ExitCode.OK
    deep = '{"$and": [' * 3000 + '{"source": "a.md"}' + "]}" * 3000
    result = invoke("search", "x", "--filter", deep)
    assert result.exit_code == ExitCode.CONFIG_ERROR and "Traceback" not in result.output


def test_names_are_escaped_on_the_terminal_and_exact_in_json(cli_case):
    assert invoke("ingest", "docs", "-q").exit_code == ExitCode.OK
    text = invoke("search", "Odd name with a line break", "-k", "10")
    line = next(line for line in text.stdout.splitlines() if "line.md" in line)
    assert "new\\nline.md" in line
    hits = json.loads(invoke("search", "Odd name with a line break", "-k", "10", "--json").stdout)
    assert "new\nline.md" in {h["metadata"]["source"] for h in hits}


def test_a_ray_runtime_that_cannot_start_is_one_line_and_the_store_code(cli_case):
    pytest.importorskip("ray")
    result = invoke("ingest", "docs", "--executor", "ray", "--ray-address", "bogus::address")
    assert result.exit_code == ExitCode.STORE_UNAVAILABLE
    assert "bogus::address" in result.stderr and "Traceback" not in result.output


KEY = "k3y-f0r-qdr4nt-that-is-not-named-like-a-secret"


class _Refusing(BaseHTTPRequestHandler):
    """A Qdrant-like server that refuses every request, repeating the key it received."""

    def _refuse(self) -> None:
        body = json.dumps({"status": {"error": f"invalid api-key '{self.headers.get('api-key')}'"}})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = do_DELETE = _refuse

    def log_message(self, *args: object) -> None:
        pass


def test_secrets_from_variables_of_any_name_are_masked_by_every_command(cli_case, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("QDRANT_ACCESS", KEY)
        (cli_case / "qr.toml").write_text(
            f'[store]\nbackend = "qdrant"\nuri = "http://127.0.0.1:{server.server_port}"\n'
            'api_key = "${QDRANT_ACCESS}"\n'
        )
        for command in (["search", "hello"], ["stats"], ["drop", "--yes"], ["sync", "docs"], ["verify"]):
            result = invoke(*command, "--config", "qr.toml", "--json")
            assert result.exit_code != ExitCode.OK
            assert KEY not in result.output, (command, result.output)
    finally:
        server.shutdown()


def test_library_searchers_mask_the_secrets_of_their_configuration(cli_case, monkeypatch):
    from m3ingest.redact import redact
    from m3ingest.retrievers import M3Retriever

    monkeypatch.setenv("QDRANT_ACCESS", KEY + "-2")
    (cli_case / "qr.toml").write_text(
        '[store]\nbackend = "qdrant"\nuri = "http://127.0.0.1:9"\napi_key = "${QDRANT_ACCESS}"\n'
    )
    M3Retriever.from_config("qr.toml")
    assert redact(f"refused {KEY}-2") == "refused ***"
