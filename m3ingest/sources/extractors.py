"""The extractor registry: file suffix -> ``(path, data) -> Document``, and ``extract`` that applies it."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from .document import Document, ExtractionError, sections_from_starts
from .formats import extract_docx, extract_html, extract_pdf
from .structure import markdown_sections, rst_sections
from .text import BinaryContent, decode_text

Extractor = Callable[[Path, bytes], Document]

_REGISTRY: dict[str, Extractor] = {}


def _suffixes(suffixes: str | Iterable[str]) -> list[str]:
    items = [suffixes] if isinstance(suffixes, str) else list(suffixes)
    out = []
    for s in items:
        s = s.strip().lower()
        if not s.lstrip("."):
            raise ValueError(f"not a file suffix: {s!r}")
        out.append(s if s.startswith(".") else "." + s)
    return out


def register_extractor(suffixes: str | Iterable[str], func: Extractor) -> None:
    """Use ``func(path, data) -> Document`` for files ending in ``suffixes`` (e.g. ``".csv"`` or ``["log", ".out"]``).

    Suffixes are case-insensitive; a later registration replaces an earlier one, built-ins included.
    ``func`` raises ``ExtractionError`` for bad input; any other exception is reported the same way.
    """
    for s in _suffixes(suffixes):
        _REGISTRY[s] = func


def supported_suffixes() -> frozenset[str]:
    """The suffixes (lower case, with the dot) that have an extractor; ``walk`` yields only these files."""
    return frozenset(_REGISTRY)


def content_hash(data: bytes) -> str:
    """SHA-256 of a file's bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """All bytes of a regular file; ``ExtractionError`` with a reason if it vanished, is unreadable or special.

    The file is opened without blocking, so a FIFO named like a document cannot hang the run.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ExtractionError(path, "file disappeared") from None
    except PermissionError:
        raise ExtractionError(path, "permission denied (check the file's owner and mode)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ExtractionError(path, "symlink loop") from None
        raise ExtractionError(path, f"cannot open: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a special file"
            raise ExtractionError(path, f"not a regular file ({kind})")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read()
    except OSError as e:
        raise ExtractionError(path, f"cannot read: {e.strerror or e}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def extract(path: str | os.PathLike[str], data: bytes | None = None) -> Document:
    """The text of ``path`` by its suffix's extractor; ``data`` is the file's bytes if already read.

    Raises ``ExtractionError(path, reason)`` for any bad input: unsupported type, unreadable,
    vanished, empty, binary, undecodable, corrupt or encrypted, or no text at all.
    """
    path = Path(path)
    func = _REGISTRY.get(path.suffix.lower())
    if func is None:
        raise ExtractionError(path, f"unsupported file type {path.suffix or '(no suffix)'!r}; supported: {', '.join(sorted(_REGISTRY))}")
    if data is None:
        data = read_bytes(path)
    if not data:
        raise ExtractionError(path, "empty file")
    try:
        doc = func(path, data)
    except ExtractionError:
        raise
    except Exception as e:  # a library choking on a malformed file must not stop a run
        raise ExtractionError(path, f"cannot extract text: {type(e).__name__}: {e}") from e
    if not doc.text.strip():
        raise ExtractionError(path, "no text (only whitespace or markup)")
    return doc


def _decode(path: Path, data: bytes) -> str:
    try:
        return decode_text(data)[0]
    except BinaryContent as e:
        raise ExtractionError(path, str(e)) from None


def extract_plain_text(path: Path, data: bytes) -> Document:
    """Plain text in any detected encoding, one section."""
    text = _decode(path, data)
    return Document(text, sections_from_starts(text, []))


def extract_markdown(path: Path, data: bytes) -> Document:
    """Markdown source text, sections by ATX and setext headings."""
    text = _decode(path, data)
    sections, title = markdown_sections(text)
    return Document(text, sections, {"title": title} if title else {})


def extract_rst(path: Path, data: bytes) -> Document:
    """reStructuredText source text, sections by underlined titles."""
    text = _decode(path, data)
    sections, title = rst_sections(text)
    return Document(text, sections, {"title": title} if title else {})


register_extractor(".txt", extract_plain_text)
register_extractor([".md", ".markdown"], extract_markdown)
register_extractor(".rst", extract_rst)
register_extractor([".html", ".htm"], extract_html)
register_extractor(".pdf", extract_pdf)
register_extractor(".docx", extract_docx)
