"""Bytes of a plain-text file to ``str``: BOMs, UTF-8, then legacy 8-bit encodings."""

from __future__ import annotations

import codecs
import re
from itertools import islice

from charset_normalizer import from_bytes

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# How much of a file's start is looked at before the rest is read.
SNIFF_BYTES = 8192
_TIE = 0.05
# Control characters that never occur in text; a decoded file with more than 1% of them is binary.
_CONTROL = re.compile("[" + "".join(chr(c) for c in range(32) if chr(c) not in "\t\n\r\f\v\x1b") + "\x7f]")


class BinaryContent(ValueError):
    """The bytes are not text in any encoding we can recognise."""


def sniff_binary(head: bytes) -> str | None:
    """Why a file starting with ``head`` cannot be text (NUL bytes without a UTF-16/32 byte order
    mark), or None. ``decode_text`` applies the same rule to the whole file."""
    if b"\x00" in head and not any(head.startswith(bom) for bom, _ in _BOMS):
        return "binary content (NUL bytes)"
    return None


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode ``data`` and normalise line ends to ``\\n``; returns (text, encoding name).

    Raises ``BinaryContent`` for NUL bytes without a UTF-16/32 BOM, or bytes no encoding explains.
    While line ends are normalised, at most one other copy of the text exists.
    """
    text, encoding = _decoded(data)
    # Rebinding drops each string as the next is made.
    text = text.replace("\r\n", "\n")
    return text.replace("\r", "\n"), encoding


def _decoded(data: bytes) -> tuple[str, str]:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return str(memoryview(data)[len(bom) :], encoding), encoding
            except UnicodeDecodeError as e:
                raise BinaryContent(
                    f"starts with a {encoding} byte order mark but is not {encoding}: {e.reason}"
                ) from None
    if b"\x00" in data:
        raise BinaryContent("binary content (NUL bytes)")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    matches = from_bytes(data)
    best = matches.best()
    if best is not None:
        # Short texts often fit several code pages equally well; prefer the most common one on a near tie.
        best = next((m for m in matches if m.encoding == "cp1252" and m.chaos <= best.chaos + _TIE), best)
    if best is None:
        raise BinaryContent("undecodable: not UTF-8 and no legacy encoding fits")
    text = str(best)
    allowed = len(text) // 100
    if sum(1 for _ in islice(_CONTROL.finditer(text), allowed + 1)) > allowed:
        raise BinaryContent(f"binary content (control characters; best guess {best.encoding})")
    return text, best.encoding
