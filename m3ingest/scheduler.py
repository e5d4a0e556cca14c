"""``m3ingest schedule``: run the sync job on a cron schedule, for hosts without cron.

Runs never overlap: the scheduler runs one job at a time, a tick that falls while a run is busy
is skipped (the next run catches up, syncs are incremental), and every run takes the collection
lock, so a cron job or a manual run on the same collection is never interleaved either.
SIGTERM or Ctrl-C sets a stop flag: the pipeline finishes its current batch, commits its records
and returns, then the scheduler exits 0. A second signal stops at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from croniter import croniter

if TYPE_CHECKING:
    from m3ingest.config import Config

log = logging.getLogger(__name__)

Job = Callable[[threading.Event], Any]


def parse_cron(expression: str) -> str:
    """The expression, checked; raises ``ConfigError`` naming it when it is not a cron line."""
    from m3ingest.config import ConfigError

    if not croniter.is_valid(expression):
        raise ConfigError(
            f"--cron {expression!r} is not a cron expression "
            "(five fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *')"
        )
    return expression


def next_fire(expression: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that the expression matches."""
    return croniter(expression, after).get_next(datetime)


def _local_now() -> datetime:
    return datetime.now().astimezone()


@contextmanager
def stop_on_signals(
    stop: threading.Event, busy: Callable[[], bool] = lambda: True
) -> Iterator[threading.Event]:
    """SIGTERM / SIGINT set ``stop``; a second one raises KeyboardInterrupt (main thread only).

    ``busy()`` says whether a run is under way (the log line then says it ends after its batch).
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous: dict[int, Any] = {}

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        if busy():
            log.warning("%s received: stopping after the current batch (send it again to stop at once)", name)
        else:
            log.warning("%s received: stopping", name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Scheduler:
    """Calls ``job(stop)`` at each time the cron expression matches, one run at a time.

    ``clock`` returns the current (timezone-aware) time; waiting is done on the ``stop`` flag,
    so setting it ends the wait at once.
    """

    def __init__(
        self,
        cron: str,
        job: Job,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], datetime] = _local_now,
        run_now: bool = False,
    ) -> None:
        self.cron = parse_cron(cron)
        self.job = job
        self.stop = stop or threading.Event()
        self.clock = clock
        self.run_now = run_now
        self.runs: list[datetime] = []
        self.results: list[Any] = []
        #: True while a run is under way.
        self.busy = False

    def run(self, max_runs: int | None = None) -> int:
        """Run until stopped (or ``max_runs`` runs); returns the number of runs made."""
        due = self.clock() if self.run_now else next_fire(self.cron, self.clock())
        while not self.stop.is_set() and (max_runs is None or len(self.runs) < max_runs):
            log.info("next run at %s", due.isoformat(timespec="seconds"))
            delay = (due - self.clock()).total_seconds()
            if delay > 0 and self.stop.wait(delay):
                break
            self._run_once(due)
            now = self.clock()
            following = next_fire(self.cron, due)
            if following <= now:
                skipped = 0
                while following <= now:
                    skipped += 1
                    following = next_fire(self.cron, following)
                log.warning(
                    "the run took until %s: %d scheduled time(s) skipped, next at %s",
                    now.isoformat(timespec="seconds"),
                    skipped,
                    following.isoformat(timespec="seconds"),
                )
            due = following
        log.info("scheduler stopped after %d run(s)", len(self.runs))
        return len(self.runs)

    def _run_once(self, due: datetime) -> None:
        self.runs.append(due)
        log.info("run scheduled for %s starting", due.isoformat(timespec="seconds"))
        self.busy = True
        try:
            result = self.job(self.stop)
        except Exception as exc:  # a failed run must not end the schedule; the next one retries
            log.error("run scheduled for %s failed: %s", due.isoformat(timespec="seconds"), exc)
            result = exc
        else:
            log.info("run scheduled for %s finished: %s", due.isoformat(timespec="seconds"), result)
        finally:
            self.busy = False
        self.results.append(result)


def schedule(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    config: Config | str | os.PathLike[str] | None = None,
    *,
    cron: str,
    run_now: bool = False,
    report: str | os.PathLike[str] | None = None,
    stop: threading.Event | None = None,
    max_runs: int | None = None,
    **overrides: Any,
) -> int:
    """Run ``sync(paths, config)`` at every time ``cron`` matches, until stopped.

    ``report``: each run's summary is written there as JSON (the last run's). A run that finds
    the collection locked by another run is skipped. Signals are handled as described above when
    called from the main thread. Returns the number of runs.
    """
    from m3ingest.config import resolve_config
    from m3ingest.errors import ExitCode
    from m3ingest.ingest import roots_of, sync
    from m3ingest.locking import CollectionLocked
    from m3ingest.redact import redact_data

    cfg = resolve_config(config, **overrides)
    parse_cron(cron)
    roots = roots_of(paths)

    def job(stop: threading.Event) -> int:
        try:
            summary = sync(roots, cfg, stop=stop)
        except CollectionLocked as e:
            log.warning("run skipped: %s", e)
            return int(ExitCode.LOCKED)
        for line in summary.lines():
            log.info("%s", line)
        if report is not None:
            out = Path(report)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(redact_data(summary.to_dict()), indent=2) + "\n", "utf-8")
        return int(summary.exit_code)

    scheduler = Scheduler(cron, job, stop=stop, run_now=run_now)
    with stop_on_signals(scheduler.stop, busy=lambda: scheduler.busy):
        return scheduler.run(max_runs)
