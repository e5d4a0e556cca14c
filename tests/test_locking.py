"""The collection lock: one writer at a time, waiting, and recovery from killed or vanished owners."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from m3ingest.context import CollectionContext
from m3ingest.locking import CollectionLock, CollectionLocked, LockOwner, read_owner

HOLDER = textwrap.dedent(
    """
    import sys, time
    from m3ingest.locking import CollectionLock
    lock = CollectionLock(sys.argv[1], "docs").acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    open(sys.argv[1] + ".done", "w").close()
    lock.release()
    """
)


def start_holder(path: Path, seconds: float = 60) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_path_sits_next_to_the_records(tmp_path: Path) -> None:
    from m3ingest.config import Config

    config = Config.model_validate({"records": {"path": str(tmp_path / "m3ingest.records.sqlite")}})
    assert CollectionContext.from_config(config).lock_path == tmp_path / "m3ingest.records.sqlite.lock"


def test_second_run_is_refused_with_the_owner_named(tmp_path: Path) -> None:
    path = tmp_path / "docs.lock"
    proc = start_holder(path)
    try:
        with pytest.raises(CollectionLocked) as err:
            CollectionLock(path, "docs").acquire()
        assert err.value.owner is not None and err.value.owner.pid == proc.pid
        message = str(err.value)
        assert f"pid {proc.pid}" in message and "'docs'" in message and "--wait" in message
    finally:
        proc.kill()
        proc.wait()


def test_wait_with_timeout_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "docs.lock"
    proc = start_holder(path)
    try:
        with pytest.raises(CollectionLocked, match="after waiting"):
            CollectionLock(path, "docs", wait=True, timeout=0.5, poll=0.05).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_wait_queues_behind_the_running_job(tmp_path: Path) -> None:
    path = tmp_path / "docs.lock"
    proc = start_holder(path, seconds=0.5)
    with CollectionLock(path, "docs", wait=True, timeout=60, poll=0.05) as lock:
        done = path.with_name(path.name + ".done")
        assert done.exists(), "the lock was granted while the first run still held it"
        assert lock.previous is None, "a run that exited normally must not look crashed"
    proc.wait()


def test_lock_of_a_killed_run_is_released_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "docs.lock"
    proc = start_holder(path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with CollectionLock(path, "docs") as lock:
        assert lock.previous is not None and lock.previous.pid == proc.pid
        assert read_owner(path).pid == os.getpid()
    assert read_owner(path) is None, "a clean release clears the owner"


def test_only_one_of_many_threads_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "docs.lock"
    inside = 0
    overlaps = []
    guard = threading.Lock()

    def worker() -> None:
        nonlocal inside
        for _ in range(5):
            with CollectionLock(path, "docs", wait=True, timeout=30, poll=0.01):
                with guard:
                    inside += 1
                    overlaps.append(inside)
                time.sleep(0.01)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 20 and max(overlaps) == 1


def test_abandoned_lock_with_expired_heartbeat_is_broken(tmp_path: Path) -> None:
    # A holder whose file lock the kernel still honours but whose heartbeat stopped (e.g. a run
    # frozen on another machine sharing the folder): after the lease the lock is taken over, and
    # the old holder learns it at its next heartbeat and raises its stop flag.
    path = tmp_path / "docs.lock"
    stop = threading.Event()
    frozen = CollectionLock(path, "docs", lease=3600, stop=stop).acquire()
    frozen._stop_heartbeat.set()
    frozen._heartbeat.join()
    stale = json.loads(path.read_text()) | {"heartbeat": time.time() - 10}
    path.write_text(json.dumps(stale))
    frozen.lease = 0.05
    with pytest.raises(CollectionLocked):
        CollectionLock(path, "docs", lease=3600).acquire()
    with CollectionLock(path, "docs", lease=1.0) as taker:
        assert taker.held
        frozen._stop_heartbeat.clear()
        frozen._beat()
        assert frozen.lost.is_set() and stop.is_set()
        assert read_owner(path).pid == os.getpid()
    frozen.release()


def test_dead_owner_on_this_host_is_stale_and_foreign_owner_needs_the_lease() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    now = time.time()
    dead = LockOwner(proc.pid, socket.gethostname(), now, now)
    assert dead.process_alive() is False and dead.is_stale(lease=3600)
    elsewhere = LockOwner(proc.pid, "another-host.invalid", now, now)
    assert elsewhere.process_alive() is None
    assert not elsewhere.is_stale(lease=60) and elsewhere.is_stale(lease=60, now=now + 61)


def test_cli_exits_3_when_the_collection_is_locked(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from m3ingest.cli import app
    from m3ingest.config import load_config
    from m3ingest.errors import ExitCode

    from ingest_helpers import TINY

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("text")
    uri = str(tmp_path / "m3.db")
    config = load_config(overrides={"store": {"uri": uri, "collection": "docs"}})
    proc = start_holder(CollectionContext.from_config(config).lock_path)
    try:
        args = ["sync", str(docs), "--uri", uri, "--collection", "docs", "--model", str(TINY)]
        now = CliRunner().invoke(app, args)
        assert now.exit_code == ExitCode.LOCKED
        assert f"locked by pid {proc.pid}" in now.output
        waited = CliRunner().invoke(app, [*args, "--wait", "--wait-timeout", "0.3"])
        assert waited.exit_code == ExitCode.LOCKED and "after waiting" in waited.output
    finally:
        proc.kill()
        proc.wait()


def test_drop_is_refused_while_a_run_holds_the_lock(tmp_path: Path) -> None:
    import m3ingest
    from m3ingest.connectors import store_from_config

    from ingest_helpers import make_config, paragraphs

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(paragraphs(1, 3))
    config = make_config(tmp_path, "milvus")
    m3ingest.ingest(docs, config)
    proc = start_holder(CollectionContext.from_config(config).lock_path)
    try:
        with pytest.raises(CollectionLocked):
            m3ingest.drop(config)
    finally:
        proc.kill()
        proc.wait()
    with store_from_config(config.store) as store:
        assert store.count("docs") > 0
    assert m3ingest.drop(config)["dropped"]
