"""What an extractor produces: the text of one file, its sections and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
