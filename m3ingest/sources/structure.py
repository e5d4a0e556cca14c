"""Heading paths of lightweight markup: Markdown (ATX and setext) and reStructuredText."""

from __future__ import annotations

import re
from collections.abc import Iterator

from .document import Section, sections_from_starts

_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH = re.compile(r" {0,3}(?:[-*+>|]|\d+[.)])(?:\s|$)")
_RST_ADORNMENT = re.compile(r"([!-/:-@\[-`{-~])\1+[ \t]*$")


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(offset, line without its newline) for each line of ``text``."""
    pos = 0
    for line in text.split("\n"):
        yield pos, line
        pos += len(line) + 1


def _path(stack: list[tuple[int, str]], level: int, title: str) -> tuple[str, ...]:
    while stack and stack[-1][0] >= level:
        stack.pop()
    stack.append((level, title))
    return tuple(t for _, t in stack)


def markdown_sections(text: str) -> tuple[list[Section], str | None]:
    """Sections split at ATX (``# H``) and setext (underlined) headings; the first level-1 heading is the title.

    Fenced code blocks and a leading YAML front matter block are not searched for headings.
    """
    lines = list(_lines(text))
    starts: list[tuple[int, tuple[str, ...]]] = []
    stack: list[tuple[int, str]] = []
    title: str | None = None
    fence: str | None = None
    i = 0
    if lines and lines[0][1].rstrip() == "---":
        end = next((j for j in range(1, len(lines)) if lines[j][1].rstrip() in ("---", "...")), None)
        if end is not None:
            i = end + 1
    prev_text: tuple[int, str] | None = None  # the previous line, if a one-line paragraph could be a setext title
    while i < len(lines):
        offset, line = lines[i]
        i += 1
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip(fence[0] + " \t"):
                fence = None
            continue
        if m:
            fence = m.group(1)
            prev_text = None
            continue
        heading: tuple[int, int, str] | None = None
        atx = _ATX.match(line)
        setext = _SETEXT.match(line)
        if atx:
            heading = (offset, len(atx.group(1)), (atx.group(2) or "").strip())
        elif setext and prev_text is not None:
            heading = (prev_text[0], 1 if setext.group(1)[0] == "=" else 2, prev_text[1].strip())
        if heading is not None:
            start, level, name = heading
            if name:
                starts.append((start, _path(stack, level, name)))
                if level == 1 and title is None:
                    title = name
            prev_text = None
            continue
        blank = not line.strip()
        after_blank = i == 1 or not lines[i - 2][1].strip()
        prev_text = (offset, line) if not blank and after_blank and not _NOT_PARAGRAPH.match(line) else None
    return sections_from_starts(text, starts), title


def rst_sections(text: str) -> tuple[list[Section], str | None]:
    """Sections split at reStructuredText titles (a line underlined, optionally overlined, by punctuation).

    Levels follow the order in which adornment styles first appear, as docutils does.
    """
    lines = list(_lines(text))
    styles: list[tuple[str, bool]] = []
    starts: list[tuple[int, tuple[str, ...]]] = []
    stack: list[tuple[int, str]] = []
    title: str | None = None
    i = 0
    while i + 1 < len(lines):
        offset, line = lines[i]
        under = lines[i + 1][1]
        name = line.strip()
        m = _RST_ADORNMENT.match(under)
        if not name or _RST_ADORNMENT.match(line) or not m or len(under.rstrip()) < len(name) or line[:1].isspace():
            i += 1
            continue
        over_line = lines[i - 1][1] if i > 0 else ""
        overlined = i > 0 and over_line.rstrip() == under.rstrip()
        style = (m.group(1), overlined)
        if style not in styles:
            styles.append(style)
        level = styles.index(style) + 1
        starts.append((lines[i - 1][0] if overlined else offset, _path(stack, level, name)))
        if title is None:
            title = name
        i += 2
    return sections_from_starts(text, starts), title
