"""Bytes of a plain-text file to ``str``: BOMs, UTF-8, then legacy 8-bit encodings."""

from __future__ import annotations

import codecs

from charset_normalizer import from_bytes

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Control characters that never occur in text; a decoded file full of them is binary.
_TIE = 0.05
_CONTROL = {chr(c) for c in range(32) if chr(c) not in "\t\n\r\f\v\x1b"} | {"\x7f"}


class BinaryContent(ValueError):
    """The bytes are not text in any encoding we can recognise."""


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode ``data`` and normalise line ends to ``\\n``; returns (text, encoding name).

    Raises ``BinaryContent`` for NUL bytes without a UTF-16/32 BOM, or bytes no encoding explains.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as e:
                raise BinaryContent(f"starts with a {encoding} byte order mark but is not {encoding}: {e.reason}") from None
            return _normalise(text), encoding
    if b"\x00" in data:
        raise BinaryContent("binary content (NUL bytes)")
    try:
        return _normalise(data.decode("utf-8")), "utf-8"
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
    if sum(text.count(c) for c in _CONTROL) > len(text) // 100:
        raise BinaryContent(f"binary content (control characters; best guess {best.encoding})")
    return _normalise(text), best.encoding


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
