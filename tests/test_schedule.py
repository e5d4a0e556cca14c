"""The cron scheduler: fires at the cron times, never overlaps, stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timedelta, timezone

import pytest

from m3ingest.scheduler import Scheduler, next_fire, parse_cron

UTC = timezone.utc


class FakeClock:
    """Time that moves only when a job advances it or the scheduler waits (instantly)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def scheduler(self, cron: str, job, **kwargs) -> Scheduler:
        scheduler = Scheduler(cron, job, clock=self, **kwargs)
        real_wait = scheduler.stop.wait

        def wait(timeout: float | None = None) -> bool:
            self.now += timedelta(seconds=timeout or 0)
            return real_wait(0)

        scheduler.stop.wait = wait  # type: ignore[method-assign]
        return scheduler


def test_cron_times() -> None:
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert next_fire("0 3 * * *", start) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    assert next_fire("*/15 * * * *", start) == datetime(2026, 1, 1, 12, 15, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a cron expression"):
        parse_cron("every night")


def test_runs_at_each_cron_time_without_waiting_in_fake_time() -> None:
    clock = FakeClock(datetime(2026, 1, 1, 2, 59, 59, 999000, tzinfo=UTC))
    seen = []

    def job(stop: threading.Event) -> int:
        seen.append(clock())
        clock.now += timedelta(hours=1)
        return 0

    scheduler = clock.scheduler("0 3 * * *", job)
    assert scheduler.run(max_runs=3) == 3
    assert scheduler.runs == [datetime(2026, 1, d, 3, 0, tzinfo=UTC) for d in (1, 2, 3)]
    assert scheduler.results == [0, 0, 0]


def test_run_now_triggers_immediately_and_a_failed_run_does_not_stop_the_schedule() -> None:
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC))
    calls = []

    def job(stop: threading.Event) -> int:
        calls.append(clock())
        clock.now += timedelta(minutes=1)
        if len(calls) == 1:
            raise RuntimeError("store down")
        return 0

    scheduler = clock.scheduler("* * * * *", job, run_now=True)
    assert scheduler.run(max_runs=2) == 2
    assert calls[0] == datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert isinstance(scheduler.results[0], RuntimeError) and scheduler.results[1] == 0


def test_a_long_run_skips_missed_ticks_instead_of_overlapping() -> None:
    clock = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    active = []
    overlap = []

    def job(stop: threading.Event) -> int:
        overlap.append(bool(active))
        active.append(1)
        clock.now += timedelta(minutes=3, seconds=30)  # a run longer than three ticks
        active.pop()
        return 0

    scheduler = clock.scheduler("* * * * *", job, run_now=True)
    scheduler.run(max_runs=3)
    assert overlap == [False, False, False]
    assert scheduler.runs[1:] == [
        datetime(2026, 1, 1, 12, 4, tzinfo=UTC),
        datetime(2026, 1, 1, 12, 8, tzinfo=UTC),
    ]


SCHEDULER = textwrap.dedent(
    """
    import logging, sys, time
    from m3ingest.logs import setup_logging
    from m3ingest.scheduler import Scheduler, stop_on_signals

    setup_logging("INFO")
    batches = []

    def job(stop):
        print("run started", flush=True)
        for _ in range(600):  # a run of many batches that checks the flag between them
            if stop.is_set():
                print(f"stopped between batches after {len(batches)}", flush=True)
                return 0
            time.sleep(0.05)
            batches.append(1)
        return 0

    scheduler = Scheduler("* * * * *", job, run_now=True)
    with stop_on_signals(scheduler.stop):
        runs = scheduler.run()
    print(f"exit after {runs} run(s)", flush=True)
    """
)


def test_sigterm_stops_between_batches_and_exits_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCHEDULER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "run started"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped between batches" in out and "exit after 1 run(s)" in out
    assert "SIGTERM received" in err
