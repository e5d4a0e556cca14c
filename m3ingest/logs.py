"""Logging for the CLI and scheduled jobs: levels, one stderr handler, secrets masked."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from m3ingest.redact import SecretFilter, install_record_redaction

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def resolve_level(level: str | int | None = None, verbose: int = 0) -> int:
    """The level from ``--log-level`` (a name or number) or ``-v`` counts (INFO, then DEBUG)."""
    if level is None:
        return logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    return logging.getLevelName(name)


def setup_logging(
    level: str | int | None = None, verbose: int = 0, stream: TextIO | None = None
) -> logging.Handler:
    """Send log records to ``stream`` (stderr) with secrets masked; safe to call again.

    m3ingest logs at the chosen level; other libraries only from WARNING up (or DEBUG when
    m3ingest does), so their request chatter stays out of scheduled-job logs.
    """
    resolved = resolve_level(level, verbose)
    install_record_redaction()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_m3ingest", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._m3ingest = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(SecretFilter())
    root.addHandler(handler)
    root.setLevel(resolved if resolved <= logging.DEBUG else max(resolved, logging.WARNING))
    logging.getLogger("m3ingest").setLevel(resolved)
    logging.captureWarnings(True)
    return handler
