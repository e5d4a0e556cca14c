"""The cron scheduler: fires at the cron times, never overlaps, stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

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


def test_schedule_runs_the_sync_job_and_writes_its_report(tmp_path) -> None:
    import json

    import m3ingest

    from ingest_helpers import make_config, paragraphs

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(paragraphs(1, 4))
    config = make_config(tmp_path, "qdrant")
    report = tmp_path / "reports" / "last.json"
    runs = m3ingest.schedule(
        [docs], config, cron="0 3 * * *", run_now=True, report=report, max_runs=1
    )
    assert runs == 1
    assert json.loads(report.read_text())["files_new"] == 1
    assert m3ingest.verify(config).clean


def test_schedule_refuses_a_bad_cron_line_as_a_configuration_error() -> None:
    from click.testing import CliRunner

    from m3ingest.cli import app
    from m3ingest.errors import ExitCode

    result = CliRunner().invoke(app, ["schedule", ".", "--cron", "every night"])
    assert result.exit_code == ExitCode.CONFIG_ERROR and "not a cron expression" in result.output


# --- the deployment examples in configs/deploy stay runnable --------------------------------------

DEPLOY = Path(__file__).parent.parent / "configs" / "deploy"


def deploy_commands() -> dict[str, list[str]]:
    """The m3ingest arguments of each example (after the program name)."""
    import shlex

    import yaml

    def after_program(words: list[str]) -> list[str]:
        start = next(i for i, w in enumerate(words) if w.endswith("m3ingest")) + 1
        end = words.index(">>") if ">>" in words else len(words)
        return words[start:end]

    out = {}
    cron_line = next(
        line for line in (DEPLOY / "crontab").read_text().splitlines() if line[:1].isdigit()
    )
    out["crontab"] = after_program(shlex.split(cron_line.split("&&", 1)[1]))
    for unit in ("m3ingest-sync.service", "m3ingest-schedule.service"):
        exec_line = next(
            line for line in (DEPLOY / unit).read_text().splitlines() if line.startswith("ExecStart=")
        )
        out[unit] = after_program(shlex.split(exec_line.removeprefix("ExecStart=")))
    job = yaml.safe_load((DEPLOY / "cronjob.yaml").read_text())
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    out["cronjob.yaml"] = after_program(container["args"])
    return out


@pytest.mark.parametrize(
    "example", ["crontab", "m3ingest-sync.service", "m3ingest-schedule.service", "cronjob.yaml"]
)
def test_deploy_examples_are_valid_m3ingest_command_lines(example) -> None:
    from m3ingest.cli import app

    args = deploy_commands()[example]
    command = app.commands[args[0]]
    ctx = command.make_context(args[0], list(args[1:]))
    assert ctx.params["config"] is not None
    if args[0] == "schedule":
        assert parse_cron(ctx.params["cron"])


def test_deploy_schedules_and_configuration_are_valid(monkeypatch) -> None:
    import yaml

    from m3ingest.config import load_config

    cron_line = next(
        line for line in (DEPLOY / "crontab").read_text().splitlines() if line[:1].isdigit()
    )
    assert parse_cron(" ".join(cron_line.split()[:5]))
    job = yaml.safe_load((DEPLOY / "cronjob.yaml").read_text())
    assert parse_cron(job["spec"]["schedule"]) and job["spec"]["concurrencyPolicy"] == "Forbid"
    config = load_config(DEPLOY / "m3ingest.toml", env={"MILVUS_TOKEN": "t0ken-value"})
    assert config.store.token.get_secret_value() == "t0ken-value"
