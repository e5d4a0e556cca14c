"""What an ingest run did, for the terminal, ``--json`` and ``--report``."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from m3ingest.errors import ExitCode
from m3ingest.printable import printable

log = logging.getLogger("m3ingest.ingest")


@dataclass
class Summary:
    """Counts of one run, and every file that failed with its reason."""

    files_seen: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    tokens_encoded: int = 0
    seconds: float = 0.0
    #: True when a stop was requested and the run ended early (records stay consistent).
    stopped: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FILES_FAILED if self.files_failed else ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def fail(self, path: str, reason: str) -> None:
        """Count a file that could not be ingested (what the store held for it is kept)."""
        self.files_failed += 1
        self.failures.append({"path": path, "reason": reason})
        log.warning("skipped %s: %s", printable(path), printable(reason))

    def lines(self) -> list[str]:
        """The human-readable summary, names made safe for a terminal."""
        out = [
            f"files: {self.files_seen} seen, {self.files_new} new, {self.files_changed} changed, "
            f"{self.files_unchanged} unchanged, {self.files_deleted} deleted, "
            f"{self.files_failed} failed",
            f"chunks: {self.chunks_written} written, {self.chunks_deleted} deleted; "
            f"{self.tokens_encoded} tokens encoded in {self.seconds:.1f} s",
        ]
        if self.stopped:
            out.append("stopped early on request; the next run continues where this one ended")
        out += [f"failed: {printable(f['path'])}: {printable(f['reason'])}" for f in self.failures]
        return out
