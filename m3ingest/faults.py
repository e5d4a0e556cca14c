"""Fault injection for the crash-recovery tests: die like ``kill -9`` at a named point of a run.

``M3INGEST_CRASH_AT=<point>:<n>`` kills the process with SIGKILL the n-th time (1-based) it
reaches ``<point>``; ``*:<n>`` counts every point together. Several specs may be given, separated
by commas. Unset (always, outside tests), a crash point costs one dictionary lookup.

Points named by the pipeline: ``before_upsert``, ``after_upsert`` (acknowledged, before the
deletes of replaced chunks), ``after_delete`` (before the record commit), ``delete_source``
(while removing a vanished source), ``after_commit``; in Ray actors, ``encode_batch`` and
``store_write`` (before a write actor's upsert). Each process counts its own hits, so a
restarted actor dies again at its n-th hit.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENV = "M3INGEST_CRASH_AT"

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def _targets(spec: str) -> dict[str, int]:
    targets = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, n = part.rpartition(":")
        if not point or not n.isdigit() or int(n) < 1:
            raise ValueError(f"{ENV}={spec!r}: each entry must be <point>:<n> with n >= 1")
        targets[point] = int(n)
    return targets


def crash_point(name: str) -> None:
    """Kill this process here if ``M3INGEST_CRASH_AT`` says so; otherwise do nothing."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    targets = _targets(spec)
    with _lock:
        _counts[name] += 1
        _counts["*"] += 1
        hit = _counts[name] == targets.get(name) or _counts["*"] == targets.get("*")
    if hit:
        _die()


def _die() -> None:
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)
