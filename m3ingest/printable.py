"""Text safe to print on a terminal or in a log line: control and invisible characters made visible.

``printable`` writes as a visible escape every character that could move the cursor, end a line,
send a terminal escape sequence, reorder the text around it or hide in it:

- C0 controls, DEL and C1 controls (U+0000-U+001F, U+007F-U+009F): ``\\n``, ``\\r``, ``\\t``, else ``\\xNN``;
- surrogates (U+D800-U+DFFF), which no valid text holds. U+DC80-U+DCFF are how Python carries the
  bytes of a file name that are not valid UTF-8, so they are written ``\\xNN`` with the original byte,
  the same way the walk writes such bytes in source ids; other surrogates are written ``\\udNNN``;
- bidirectional and invisible format controls: U+00AD, U+061C, U+200B, U+200E, U+200F,
  U+202A-U+202E, U+2060-U+2064, U+2066-U+206F, U+FEFF, U+FFF9-U+FFFB, U+1D173-U+1D17A, U+E0001,
  as ``\\xNN`` (U+00AD), ``\\uNNNN`` or ``\\UNNNNNNNN``, as Python writes them.

Everything else is unchanged: text in any script, spaces, emoji. The format characters that are
part of ordinary text stay too: the zero-width joiner and non-joiner (emoji sequences, Persian,
Indic scripts), the tag characters of subdivision flag emoji, and the format characters some
scripts write with (Arabic and Syriac number signs, Mongolian, Egyptian hieroglyphs, Duployan).
A backslash is not escaped: the result is for reading, not for parsing back.
"""

from __future__ import annotations

import re

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_UNPRINTABLE = re.compile(
    "["
    "\x00-\x1f\x7f-\x9f"
    "\ud800-\udfff"
    "\u00ad\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U0001d173-\U0001d17a\U000e0001"
    "]"
)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with control, surrogate and bidi/invisible format characters written as visible escapes."""
    return _UNPRINTABLE.sub(_escape, text)
