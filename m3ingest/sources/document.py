"""What an extractor produces (the text of one file, its sections and metadata), what it may cost, and its errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MB = 2**20


@dataclass(frozen=True)
class Section:
    """A span ``text[start:end]`` of a document under one heading path, e.g. ``("Install", "From source")``."""

    start: int
    end: int
    headings: tuple[str, ...] = ()


@dataclass
class Document:
    """The plain text of one source file.

    ``sections`` are sorted, do not overlap and lie within ``text``; text outside every section
    belongs to no heading. ``metadata`` holds what the format knows, e.g. ``{"title": ...}``.
    """

    text: str
    sections: list[Section] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """What one source file may cost; a file past a limit is reported, never cut.

    ``max_file_bytes`` bounds the bytes held for a file: its size on disk, and the inflated size
    of an archive (a ``.docx``), checked before anything is read or inflated. ``max_text_chars``
    bounds the text extracted from one file (a PDF's or an archive's text can exceed its size).
    A text of 100 Mi characters holds 100 MiB (ASCII or Latin-1) to 400 MiB (characters past
    U+FFFF) as a Python string, plus up to one copy of it while it is decoded.
    """

    max_file_bytes: int = 100 * _MB
    max_text_chars: int = 100 * _MB


def megabytes(n: int) -> str:
    """``n`` bytes in words: "210.0 MB" (MB of 2**20 bytes), or "512 bytes" below a tenth of one."""
    return f"{n / _MB:.1f} MB" if n >= _MB // 10 else f"{n:,} bytes"


def too_big(size: int, limit: int, what: str = "is") -> str:
    """The reason for a file (or what it inflates to) over ``max_file_bytes``, e.g. "is 210.0 MB, over ..."."""
    return f"{what} {megabytes(size)}, over sources.max_file_bytes ({megabytes(limit)}); raise it to ingest this file"


def too_much_text(chars: int, limit: int, more: bool = False) -> str:
    """The reason for a text over ``max_text_chars`` (``more``: counting stopped past the limit)."""
    count = f"more than {chars:,}" if more else f"{chars:,}"
    return f"has {count} characters of text, over sources.max_text_chars ({limit:,}); raise it to ingest this file"


#: The limits when none are given.
DEFAULT_LIMITS = Limits()
_LIMITS: ContextVar[Limits] = ContextVar("m3ingest_source_limits")


def current_limits() -> Limits:
    """The limits of the extraction under way (what ``extract`` was given), for extractors that
    must check them before spending memory."""
    return _LIMITS.get(DEFAULT_LIMITS)


@contextmanager
def limits_in_force(limits: Limits) -> Iterator[None]:
    token = _LIMITS.set(limits)
    try:
        yield
    finally:
        _LIMITS.reset(token)


class ExtractionError(Exception):
    """A file could not be turned into text; ``reason`` says why in words a user can act on."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def sections_from_starts(text: str, starts: list[tuple[int, tuple[str, ...]]]) -> list[Section]:
    """Sections from (start offset, heading path) pairs: each runs to the next start or the end.

    Text before the first start becomes a section without headings.
    """
    sections: list[Section] = []
    bounds = starts if starts and starts[0][0] == 0 else [(0, ()), *starts]
    for i, (start, headings) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else len(text)
        if end > start:
            sections.append(Section(start, end, headings))
    return sections
