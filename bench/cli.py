"""How long each ``m3ingest`` command takes in a fresh process, against the latency a user expects.

Every command runs as a user runs it: the ``m3ingest`` console script in a new process, with the
tiny checkpoint ``tests/fixtures/tiny-m3`` as the model (``M3INGEST_MODEL__NAME``) and the default
embedded store, a Milvus Lite file in a temporary folder. Each command runs once to warm the OS
cache, then ``--runs`` times; the median, min and max wall-clock seconds (and the median CPU
seconds of the child, steadier on a shared machine) are compared with the targets:

    --help and every command's --help, an argument error, a configuration error   < 1 s
    stats, drop --yes (a freshly ingested copy each time)                          < 2 s
    a sync of ./docs with nothing changed (after one ingest)                       < 3 s
    search                                                                         < 6 s

    python bench/cli.py                                   # all, 5 runs each -> bench/results/cli.json
    python bench/cli.py --only search --only stats --runs 3 --out /tmp/cli.json

It measures whatever the CLI is when it runs: the package the console script imports, which
``PYTHONPATH`` can point at another checkout (the JSON records which one was measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "tiny-m3"
DOCS = REPO / "docs"
SUBCOMMANDS = ("ingest", "sync", "search", "stats", "verify", "rebuild", "schedule", "drop")
TIMEOUT_S = 600


@dataclass
class Case:
    """One command line to time; ``fresh`` prepares the folder of a run that must start anew."""

    name: str
    argv: list[str]
    target_s: float
    fails: bool = False
    needs_store: bool = False
    fresh: bool = False
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)


def cases() -> list[Case]:
    return [
        Case("help", ["--help"], 1.0),
        *(Case(f"help-{c}", [c, "--help"], 1.0) for c in SUBCOMMANDS),
        Case("argument-error", ["search", "x", "--mode", "fuzzy"], 1.0, fails=True),
        Case("config-error", ["stats", "--config", "missing.toml"], 1.0, fails=True),
        Case("stats", ["stats"], 2.0, needs_store=True),
        Case("drop", ["drop", "--yes"], 2.0, needs_store=True, fresh=True),
        Case("sync-unchanged", ["sync", "docs"], 3.0, needs_store=True),
        Case("search", ["search", "how do I run m3ingest from cron"], 6.0, needs_store=True),
    ]


def m3ingest_script() -> str:
    """The console script users run: the one beside this Python, else the first on PATH."""
    beside = Path(sys.executable).with_name("m3ingest")
    found = str(beside) if beside.exists() else shutil.which("m3ingest")
    if found is None:
        sys.exit("bench/cli.py: no m3ingest console script; install the project: pip install -e .")
    return found


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3INGEST_")}
    env.update(M3INGEST_MODEL__NAME=str(TINY), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds of the child, exit code and the end of its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S
        )
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        code, err = -1, f"timed out after {TIMEOUT_S} s"
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, code, err[-2000:]


def ingested_store(work: Path, script: str, env: dict[str, str]) -> float:
    """Copy ./docs into ``work`` and ingest it there once; the seconds that took."""
    shutil.copytree(DOCS, work / "docs")
    wall, _, code, err = timed([script, "ingest", "docs", "--quiet"], work, env)
    if code != 0:
        sys.exit(f"bench/cli.py: the set-up ingest failed (exit {code}):\n{err}")
    return wall


def measure(case: Case, script: str, env: dict[str, str], work: Path, pristine: Path | None, runs: int) -> None:
    """One warm-up run, then ``runs`` timed ones; a ``fresh`` case gets a copy of ``pristine`` each time."""
    for i in range(runs + 1):
        cwd = work
        if case.fresh:
            cwd = work / f"{case.name}-{i}"
            shutil.copytree(pristine, cwd)
        wall, cpu, code, err = timed([script, *case.argv], cwd, env)
        if case.fresh:
            shutil.rmtree(cwd)
        if (code != 0) != case.fails:
            print(f"  {case.name}: unexpected exit code {code}\n{err}", file=sys.stderr)
        if i:
            case.times.append(wall)
            case.cpu.append(cpu)
            case.codes.append(code)


def summary(case: Case) -> dict[str, Any]:
    median = statistics.median(case.times)
    return {
        "argv": ["m3ingest", *case.argv],
        "target_s": case.target_s,
        "median_s": round(median, 4),
        "min_s": round(min(case.times), 4),
        "max_s": round(max(case.times), 4),
        "cpu_median_s": round(statistics.median(case.cpu), 4),
        "times_s": [round(t, 4) for t in case.times],
        "exit_codes": case.codes,
        "expected_exit": "non-zero" if case.fails else "0",
        "meets_target": median < case.target_s and all((c != 0) == case.fails for c in case.codes),
    }


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    head = f"{'case':<16} {'median':>8} {'min':>8} {'max':>8} {'cpu':>8} {'target':>8}  ok   command"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        ok = "yes" if r["meets_target"] else "NO"
        as_expected = all((c != 0) == (r["expected_exit"] != "0") for c in r["exit_codes"])
        codes = "" if as_expected else f"  exit {r['exit_codes']}"
        lines.append(
            f"{name:<16} {r['median_s']:>7.2f}s {r['min_s']:>7.2f}s {r['max_s']:>7.2f}s {r['cpu_median_s']:>7.2f}s"
            f" {'< ' + format(r['target_s'], 'g') + ' s':>8}  {ok:<4} {' '.join(r['argv'])}{codes}"
        )
    return lines


def measured(script: str, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Which m3ingest the console script imports (run away from this checkout), and its git commit."""
    python = Path(script).with_name("python")
    interpreter = str(python) if python.exists() else sys.executable
    done = subprocess.run(
        [interpreter, "-c", "import m3ingest; print(m3ingest.__file__)"],
        cwd=cwd, env=env, capture_output=True, text=True,
    )
    package = done.stdout.strip()
    tree = Path(package).parent.parent if package else REPO

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True).stdout.strip()

    return {
        "script": script,
        "package": package or done.stderr.strip()[-300:],
        "commit": git("rev-parse", "HEAD") or None,
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command, after one warm-up (default 5)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cli.json", help="JSON file to write")
    names = [c.name for c in cases()]
    parser.add_argument(
        "--only", action="append", choices=names, metavar="NAME", help=f"only this case (repeat): {', '.join(names)}"
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    selected = [c for c in cases() if not args.only or c.name in args.only]
    script, env = m3ingest_script(), child_env()
    results: dict[str, dict[str, Any]] = {}
    setup: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="m3ingest-bench-cli-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        pristine = None
        if any(c.needs_store for c in selected):
            setup["ingest_s"] = round(ingested_store(work, script, env), 3)
            pristine = Path(tmp) / "pristine"
            shutil.copytree(work, pristine)
        for case in selected:
            print(f"{case.name}: m3ingest {' '.join(case.argv)}", file=sys.stderr, flush=True)
            measure(case, script, env, work, pristine, args.runs)
            results[case.name] = summary(case)
        tree = measured(script, env, work)

    report = {
        "settings": {
            "runs": args.runs, "warmup_runs": 1, "model": str(TINY.relative_to(REPO)), "store": "Milvus Lite file"
        },
        "measured": tree,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "setup": setup,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("\n".join(table(results)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
