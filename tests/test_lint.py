"""The code stays lint- and type-clean: ``ruff check`` passes on the package, the connectors, the
tests and the benchmarks, and ``mypy`` (pyproject's [tool.mypy]) finds no issues in the package.

mypy runs on a copy laid out as installed: ``connectors/`` at the repo root is the package
``m3ingest.connectors`` (pyproject's [tool.setuptools] package-dir).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "m3ingest", "connectors", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"ruff check failed:\n{result.stdout}{result.stderr}"


def test_mypy(tmp_path: Path) -> None:
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "m3ingest", tmp_path / "m3ingest", ignore=skip)
    shutil.copytree(ROOT / "connectors", tmp_path / "m3ingest" / "connectors", ignore=skip)
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            "pyproject.toml",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "-p",
            "m3ingest",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"mypy found issues:\n{result.stdout}{result.stderr}"
