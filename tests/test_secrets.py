"""Secrets from the environment or ${VAR} never reach logs, reports, --json output or exceptions."""

from __future__ import annotations

import io
import logging

import pytest

from m3ingest.config import load_config
from m3ingest.logs import setup_logging
from m3ingest.redact import MASK, redact, redact_data, register_config, scrub_exception

TOKEN = "tok-7f3a9c1e5b"
PASSWORD = "pw-Zq8hunter2"


@pytest.mark.parametrize(
    "text, secret",
    [
        ("connect to http://admin:s3cretpw@milvus:19530 failed", "s3cretpw"),
        ("connect to https://tok_abcdef@qdrant.example.com failed", "tok_abcdef"),
        ("headers {'api-key': 'k-98765'} rejected", "k-98765"),
        ("token=abc12345, retrying", "abc12345"),
        ("Authorization: Bearer eyJhbGciOi.payload", "eyJhbGciOi"),
        ('"password": "hunter22"', "hunter22"),
    ],
)
def test_credentials_in_text_are_masked(text: str, secret: str) -> None:
    out = redact(text, env={})
    assert secret not in out and MASK in out


def test_plain_uris_and_words_are_left_alone() -> None:
    text = "wrote 12 chunks to http://milvus:19530 collection docs; tokens encoded: 512"
    assert redact(text, env={}) == text


def test_secret_env_values_are_masked_wherever_they_appear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILVUS_TOKEN", TOKEN)
    assert redact(f"server said: bad credential {TOKEN}!") == f"server said: bad credential {MASK}!"


def test_config_secrets_from_var_expansion_are_registered(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MY_VECTOR_DB_CRED", PASSWORD)  # a name that does not look secret
    file = tmp_path / "job.toml"
    file.write_text('[store]\nuri = "http://db:19530"\nuser = "svc"\npassword = "${MY_VECTOR_DB_CRED}"\n')
    config = load_config(file)
    register_config(config)
    assert PASSWORD not in redact(f"login svc/{PASSWORD} refused")
    assert PASSWORD not in repr(config) and PASSWORD not in config.model_dump_json()


def test_reports_are_redacted_throughout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_API_KEY", TOKEN)
    report = {"failures": [{"path": "a.md", "reason": f"store refused key {TOKEN}"}], "chunks": 3}
    assert TOKEN not in str(redact_data(report)) and redact_data(report)["chunks"] == 3


def test_log_records_and_tracebacks_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M3INGEST_STORE__TOKEN", TOKEN)
    stream = io.StringIO()
    handler = setup_logging("DEBUG", stream=stream)
    try:
        log = logging.getLogger("m3ingest.test")
        log.info("connecting with token %s to %s", TOKEN, "http://u:pass9876@h:1")
        try:
            raise ConnectionError(f"refused: token={TOKEN}")
        except ConnectionError:
            log.exception("store failed")
        logging.getLogger("some.library").warning("retrying http://u:pass9876@h:1 (%s)", TOKEN)
        # A library with its own handler that does not propagate (as pymilvus sets itself up).
        own = logging.getLogger("chatty.client")
        own.propagate = False
        own.addHandler(logging.StreamHandler(stream))
        own.error("rpc failed, token %s", TOKEN)
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert "store failed" in out and "ConnectionError" in out and "retrying" in out
    assert "rpc failed" in out
    assert TOKEN not in out and "pass9876" not in out


def test_exceptions_are_scrubbed_with_their_causes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MILVUS_TOKEN", TOKEN)

    class ClientError(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.message = message

        def __str__(self) -> str:
            return f"<ClientError: {self.message}>"

    try:
        try:
            raise ClientError(f"auth failed for {TOKEN}")
        except ClientError as inner:
            raise RuntimeError("connect to http://svc:pw-secret-1@db:19530 failed") from inner
    except RuntimeError as outer:
        scrub_exception(outer)
        assert "pw-secret-1" not in str(outer)
        assert TOKEN not in str(outer.__cause__)


# --- end to end: a store that fails, with credentials from the environment ----------------------

DEAD_STORE = {
    # A closed port: the connection is refused, retried with backoff, then the run stops.
    "milvus": 'uri = "http://svc:${DB_PASSWORD}@127.0.0.1:9"\ntoken = "${DB_TOKEN}"',
    "qdrant": 'uri = "http://svc:${DB_PASSWORD}@127.0.0.1:9"\napi_key = "${DB_TOKEN}"',
}


def dead_store_job(tmp_path, backend: str):
    from pathlib import Path

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Title\n\nSome text to index.\n")
    config = tmp_path / "job.toml"
    tiny = (Path(__file__).parent / "fixtures" / "tiny-m3").as_posix()
    config.write_text(
        f'[store]\nbackend = "{backend}"\ncollection = "docs"\ntimeout = 2\n{DEAD_STORE[backend]}\n'
        f'[model]\nname = "{tiny}"\ndevice = "cpu"\n'
    )
    env = {"DB_PASSWORD": PASSWORD, "DB_TOKEN": TOKEN}
    return docs, config, env


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_failing_store_leaks_no_secret_to_stderr_json_or_report(tmp_path, backend) -> None:
    import os
    import subprocess
    import sys

    from m3ingest.errors import ExitCode

    docs, config, env = dead_store_job(tmp_path, backend)
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-c", "from m3ingest.cli import main; main()", "sync", str(docs),
         "--config", str(config), "--json", "--report", str(report), "--log-level", "DEBUG"],
        env=os.environ | env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == ExitCode.STORE_UNAVAILABLE, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"m3ingest: {backend} at http://127.0.0.1:9: ") and "failed" in message, message
    outputs = [result.stdout, result.stderr, report.read_text() if report.exists() else ""]
    for output in outputs:
        assert TOKEN not in output and PASSWORD not in output


def test_failing_store_exception_from_the_library_carries_no_secret(tmp_path, monkeypatch) -> None:
    import m3ingest
    from m3ingest.connectors import StoreError

    docs, config, env = dead_store_job(tmp_path, "qdrant")
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StoreError) as err:
        m3ingest.sync([docs], config=m3ingest.load_config(config))
    text = "".join(
        str(e) + repr(e) for e in (err.value, err.value.__cause__, err.value.__context__) if e
    )
    assert "qdrant" in str(err.value)
    assert TOKEN not in text and PASSWORD not in text


def test_log_levels_from_names_and_verbosity() -> None:
    from m3ingest.logs import resolve_level

    assert resolve_level() == logging.WARNING
    assert resolve_level("info") == logging.INFO and resolve_level(verbose=2) == logging.DEBUG
    with pytest.raises(ValueError, match="unknown log level"):
        resolve_level("LOUD")
