"""Which processes hold a file open: to say who keeps an embedded store locked."""

from __future__ import annotations

import os
from pathlib import Path

#: Longest command line quoted in a message.
COMMAND_MAX = 120


def holders(path: Path) -> dict[int, str]:
    """Process id -> command line of each process with ``path`` open (this one included), as far
    as this system shows it: Linux ``/proc``; elsewhere, and for processes of other users, nothing."""
    proc = Path("/proc")
    try:
        target = str(path.resolve())
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return {}
    return {int(pid): _command(proc / pid / "cmdline") for pid in pids if _has_open(proc / pid / "fd", target)}


def _has_open(fds: Path, target: str) -> bool:
    try:
        links = os.listdir(fds)
    except OSError:  # gone, or another user's
        return False
    for fd in links:
        try:
            if os.readlink(fds / fd) == target:
                return True
        except OSError:
            continue
    return False


def _command(cmdline: Path) -> str:
    try:
        words = cmdline.read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    text = " ".join(" ".join(w.decode("utf-8", "replace").split()) for w in words) or "?"
    return text if len(text) <= COMMAND_MAX else text[: COMMAND_MAX - 3] + "..."
