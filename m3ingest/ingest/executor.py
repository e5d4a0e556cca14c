"""The one small protocol both executors implement, and the choice between them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from m3ingest.ingest.summary import Summary
    from m3ingest.ingest.writer import Run


class Executor(Protocol):
    """Runs the ingest stages of one ``Run`` over ``roots`` (files and folders)."""

    def run(self, roots: Sequence[Path], delete: bool) -> Summary:
        """Ingest ``roots``; with ``delete``, remove the chunks of files no longer there."""
        ...


def executor_for(run: Run) -> Executor:
    """The executor ``executor.kind`` names: ``local`` (this machine) or ``ray``."""
    kind = run.collection.config.executor.kind
    if kind == "ray":
        from m3ingest.ingest.ray import RayExecutor

        return RayExecutor(run)
    from m3ingest.ingest.local import LocalExecutor

    return LocalExecutor(run, workers=run.collection.config.executor.workers)
