"""The extractor registry: file suffix -> ``(path, data) -> Document``; reading a file within limits; ``extract``."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from .document import (
    DEFAULT_LIMITS,
    Document,
    ExtractionError,
    Limits,
    limits_in_force,
    sections_from_starts,
    too_big,
    too_much_text,
)
from .formats import extract_docx, extract_html, extract_pdf
from .structure import markdown_sections, rst_sections
from .text import SNIFF_BYTES, BinaryContent, decode_text, sniff_binary

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


def registered_extractors() -> dict[str, Extractor]:
    """Suffix -> extractor, as registered now (built-ins and ``register_extractor`` calls)."""
    return dict(_REGISTRY)


def supported_suffixes() -> frozenset[str]:
    """The suffixes (lower case, with the dot) that have an extractor; ``walk`` yields only these files."""
    return frozenset(_REGISTRY)


def content_hash(data: bytes) -> str:
    """SHA-256 of a file's bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: str | os.PathLike[str], limit: int | None = Limits.max_file_bytes) -> bytes:
    """All bytes of a regular file, at most ``limit`` of them (None: no bound).

    ``ExtractionError`` with a reason if it vanished, is unreadable or special, or is larger than
    ``limit`` (found from its size before anything is read, or while reading if it grows). The
    file is opened without blocking, so a FIFO named like a document cannot hang the run.
    """
    return _read(Path(path), limit, sniff=False)


def read_source(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, str]:
    """The bytes of a source file and their ``content_hash``, read once within ``limits``.

    Like ``read_bytes``, and a file of a plain-text type (``.txt``, ``.md``, ``.rst``) whose
    first 8 KiB show it is binary is refused before the rest is read.
    """
    path = Path(path)
    data = _read(path, limits.max_file_bytes, sniff=_REGISTRY.get(path.suffix.lower()) in _PLAIN_TEXT)
    return data, content_hash(data)


def _read(path: Path, limit: int | None, sniff: bool) -> bytes:
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
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory"
                if stat.S_ISDIR(st.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a special file"
            )
            raise ExtractionError(path, f"not a regular file ({kind})")
        if limit is not None and st.st_size > limit:
            raise ExtractionError(path, too_big(st.st_size, limit))
        if sniff:
            reason = sniff_binary(os.pread(fd, SNIFF_BYTES, 0))
            if reason:
                raise ExtractionError(path, reason)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            # One byte more than its size shows a file that grew after its size was read.
            want = (st.st_size if limit is None else min(st.st_size, limit)) + 1
            data = f.read(want)
            if len(data) == want:
                data += f.read(-1 if limit is None else limit + 1 - len(data))
    except OSError as e:
        raise ExtractionError(path, f"cannot read: {e.strerror or e}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if limit is not None and len(data) > limit:
        raise ExtractionError(path, too_big(limit, limit, "grew while being read to more than"))
    return data


def extract(path: str | os.PathLike[str], data: bytes | None = None, limits: Limits = DEFAULT_LIMITS) -> Document:
    """The text of ``path`` by its suffix's extractor; ``data`` is the file's bytes if already read.

    Raises ``ExtractionError(path, reason)`` for any bad input: unsupported type, unreadable,
    vanished, empty, binary, undecodable, corrupt or encrypted, no text at all, or past
    ``limits`` (reported with the setting to raise, never cut).
    """
    path = Path(path)
    func = _REGISTRY.get(path.suffix.lower())
    if func is None:
        raise ExtractionError(
            path, f"unsupported file type {path.suffix or '(no suffix)'!r}; supported: {', '.join(sorted(_REGISTRY))}"
        )
    if data is None:
        data = read_source(path, limits)[0]
    elif len(data) > limits.max_file_bytes:
        raise ExtractionError(path, too_big(len(data), limits.max_file_bytes))
    if not data:
        raise ExtractionError(path, "empty file")
    try:
        with limits_in_force(limits):
            doc = func(path, data)
    except ExtractionError:
        raise
    except Exception as e:  # a library choking on a malformed file must not stop a run
        raise ExtractionError(path, f"cannot extract text: {type(e).__name__}: {e}") from e
    if len(doc.text) > limits.max_text_chars:
        raise ExtractionError(path, too_much_text(len(doc.text), limits.max_text_chars))
    if not doc.text or doc.text.isspace():
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


# Extractors of plain text: a file they would read is refused early when its start is binary.
_PLAIN_TEXT = (extract_plain_text, extract_markdown, extract_rst)

register_extractor(".txt", extract_plain_text)
register_extractor([".md", ".markdown"], extract_markdown)
register_extractor(".rst", extract_rst)
register_extractor([".html", ".htm"], extract_html)
register_extractor(".pdf", extract_pdf)
register_extractor(".docx", extract_docx)
