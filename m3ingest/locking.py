"""One writer per collection: an operating-system file lock with its owner written inside.

The lock is an exclusive ``flock`` (through portalocker) on ``<records db>.lock``. The kernel
releases it when its process dies, however it dies, so a run killed with ``kill -9`` never blocks
the next one. The file also holds the owner (pid, host, start time, heartbeat) so that a second
run can say who holds the lock, and a run that finds the record of a holder that never released
it can say it took over from a crashed run.

Where file locks are not shared between machines (some network file systems), the heartbeat is
the fallback: a lock whose owner is a dead process on this host, or whose heartbeat is older than
the lease, is broken. The broken owner notices at its next heartbeat (``lost`` is set) and its
pipeline stops between batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import portalocker

from m3ingest.errors import ExitCode, M3IngestError, StateError

log = logging.getLogger(__name__)

#: Seconds without a heartbeat after which a lock is considered abandoned.
DEFAULT_LEASE = 300.0


class CollectionLocked(M3IngestError):
    """Another run holds the collection's lock (exit code ``LOCKED``)."""

    exit_code = ExitCode.LOCKED

    def __init__(self, collection: str, path: Path, owner: LockOwner | None, waited: float) -> None:
        self.collection = collection
        self.path = path
        self.owner = owner
        who = owner.describe() if owner else "another process"
        waited_text = f" after waiting {waited:.0f}s" if waited > 0 else ""
        super().__init__(
            f"collection {collection!r} is locked by {who}{waited_text} (lock file {path}); "
            "wait for that run to finish, or pass --wait [--wait-timeout SECONDS] to queue behind it"
        )


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or held) a lock."""

    pid: int
    host: str
    started: float
    heartbeat: float
    collection: str = ""

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} (started {started})"

    def process_alive(self) -> bool | None:
        """Whether the owner process is running; None when that cannot be known from here."""
        if self.host != socket.gethostname() or os.name == "nt":
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def is_stale(self, lease: float, now: float | None = None) -> bool:
        """A dead owner on this host, or a heartbeat older than the lease."""
        if self.process_alive() is False:
            return True
        return (time.time() if now is None else now) - self.heartbeat > lease


def read_owner(path: Path) -> LockOwner | None:
    """The owner written in a lock file; None when empty, absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
        return LockOwner(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


class CollectionLock:
    """Exclusive lock on one collection, for the duration of a ``with`` block.

    ``wait=False`` raises :class:`CollectionLocked` at once when another run holds the lock;
    ``wait=True`` polls until it is free, at most ``timeout`` seconds (None: forever).
    ``previous`` is the owner of a lock that was never released (a crashed run), if any.
    ``lost`` is set when the lock was broken by another process as abandoned; ``stop`` (the
    pipeline's stop flag), when given, is set with it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        collection: str,
        *,
        wait: bool = False,
        timeout: float | None = None,
        lease: float = DEFAULT_LEASE,
        poll: float = 0.2,
        stop: threading.Event | None = None,
    ) -> None:
        self.path = Path(path)
        self.collection = collection
        self.wait = wait
        self.timeout = timeout
        self.lease = lease
        self.poll = poll
        self.previous: LockOwner | None = None
        self.lost = threading.Event()
        self._stop = stop
        self._fh: IO[str] | None = None
        self._owner: LockOwner | None = None
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> CollectionLock:
        """Take the lock, waiting as configured; raise :class:`CollectionLocked` otherwise."""
        if self._fh is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        try:
            return self._acquire()
        except OSError as e:
            if self._fh is not None:
                self.release()
            raise StateError(
                f"cannot write the lock file {self.path}: {e.strerror or e} (free space or fix the "
                "folder's permissions, or set records.path to a writable folder)"
            ) from None

    def _acquire(self) -> CollectionLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        begin = time.monotonic()
        while True:
            fh = self._try_lock()
            if fh is not None:
                break
            owner = read_owner(self.path)
            if owner is not None and owner.is_stale(self.lease):
                self._break(owner)
                continue
            waited = time.monotonic() - begin
            if not self.wait or (self.timeout is not None and waited >= self.timeout):
                raise CollectionLocked(self.collection, self.path, owner, waited)
            time.sleep(self.poll)
        self.previous = read_owner(self.path)
        if self.previous is not None:
            log.warning(
                "taking over the lock of collection %r left by %s, which did not finish; "
                "its unfinished work is reconciled now",
                self.collection,
                self.previous.describe(),
            )
        now = time.time()
        self._owner = LockOwner(os.getpid(), socket.gethostname(), now, now, self.collection)
        self._fh = fh
        self._write_owner()
        self._stop_heartbeat.clear()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"m3ingest-lock-{self.collection}", daemon=True
        )
        self._heartbeat.start()
        log.debug("locked collection %r (%s)", self.collection, self.path)
        return self

    def release(self) -> None:
        """Clear the owner record and unlock; no-op when not held."""
        fh = self._fh
        if fh is None:
            return
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        self._fh = None
        try:
            if not self.lost.is_set():
                fh.seek(0)
                fh.truncate()
                fh.flush()
            portalocker.unlock(fh)
        finally:
            fh.close()
        log.debug("unlocked collection %r", self.collection)

    def __enter__(self) -> CollectionLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _try_lock(self) -> IO[str] | None:
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            portalocker.lock(fh, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.LockException:
            fh.close()
            return None
        # The file may have been replaced by a breaker between open() and lock(): then this lock
        # is on an orphaned inode and protects nothing.
        if not self._same_file(fh):
            portalocker.unlock(fh)
            fh.close()
            return None
        return fh

    def _same_file(self, fh: IO[str]) -> bool:
        try:
            return os.path.samestat(os.fstat(fh.fileno()), os.stat(self.path))
        except FileNotFoundError:
            return False

    def _break(self, owner: LockOwner) -> None:
        # Breakers serialise on a guard lock and re-check under it, so two waiters never both
        # remove the file and the fresh lock of a third run is never removed.
        guard = self.path.with_name(self.path.name + ".break")
        with portalocker.Lock(guard, timeout=max(self.poll * 50, 10.0)):
            current = read_owner(self.path)
            if current is None or current != owner or not current.is_stale(self.lease):
                return
            log.warning(
                "breaking the lock of collection %r held by %s: %s",
                self.collection,
                owner.describe(),
                "the process is gone" if owner.process_alive() is False else "its heartbeat expired",
            )
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _write_owner(self, **changes: Any) -> None:
        assert self._fh is not None and self._owner is not None
        data = asdict(self._owner) | changes
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(data))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def _beat(self) -> None:
        interval = max(self.lease / 5, 0.05)
        while not self._stop_heartbeat.wait(interval):
            fh = self._fh
            if fh is None:
                return
            if not self._same_file(fh):
                log.error(
                    "the lock of collection %r was taken over by another run (heartbeat older "
                    "than %.0fs); stopping after the current batch",
                    self.collection,
                    self.lease,
                )
                self.lost.set()
                if self._stop is not None:
                    self._stop.set()
                return
            self._write_owner(heartbeat=time.time())
