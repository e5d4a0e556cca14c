"""printable: control, surrogate and bidi/invisible characters become visible escapes; other text stays."""

from __future__ import annotations

import os
import unicodedata

import pytest

from m3ingest.printable import printable

#: Format characters (category Cf) that ordinary text uses, so printable keeps them.
KEPT_FORMAT = (
    {0x200C, 0x200D, 0x180E, 0x06DD, 0x070F, 0x08E2, 0x110BD, 0x110CD}
    | set(range(0x0600, 0x0606))
    | {0x0890, 0x0891}
    | set(range(0x13430, 0x13440))
    | set(range(0x1BCA0, 0x1BCA4))
    | set(range(0xE0020, 0xE0080))
)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("new\nline.md", "new\\nline.md"),
        ("a\r\tb", "a\\r\\tb"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00 bell\x07 del\x7f", "nul\\x00 bell\\x07 del\\x7f"),
        ("c1\x85\x9b", "c1\\x85\\x9b"),
        ("invoice\u202egpj.exe", "invoice\\u202egpj.exe"),
        ("\u2066isolated\u2069 \u200fmark", "\\u2066isolated\\u2069 \\u200fmark"),
        ("zero\u200bwidth\ufeff soft\u00adhyphen", "zero\\u200bwidth\\ufeff soft\\xadhyphen"),
        ("tag\U000e0001", "tag\\U000e0001"),
        ("lone \ud800 high", "lone \\ud800 high"),
        (os.fsdecode(b"m\xffname.md"), "m\\xffname.md"),
    ],
)
def test_controls_become_visible_escapes(text, shown):
    assert printable(text) == shown
    assert printable(text).isprintable()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain ascii / with spaces & symbols \\ ~",
        "naïve café Ærøskøbing",
        "日本語のテキスト 中文 한국어",
        "العربية עברית हिन्दी ไทย",
        (
            "emoji 😀 family 👩\u200d👩\u200d👧 flag 🇩🇪 "
            "wales 🏴\U000e0067\U000e0062\U000e0077\U000e006c\U000e0073\U000e007f ✔\ufe0f"
        ),
        "persian می\u200cخواهم",
        "no-break\u00a0space ideographic\u3000space thin\u2009space",
        "arabic number sign \u0600١٢",
        "private use \ue000",
    ],
)
def test_ordinary_text_is_unchanged(text):
    assert printable(text) == text


def test_every_control_and_format_character_is_escaped_or_deliberately_kept():
    for code in range(0x110000):
        char = chr(code)
        category = unicodedata.category(char)
        if category in ("Cc", "Cs") or (category == "Cf" and code not in KEPT_FORMAT):
            shown = printable(char)
            assert shown != char and shown.isascii() and shown.startswith("\\"), hex(code)
        elif code in KEPT_FORMAT:
            assert printable(char) == char, hex(code)


def test_only_the_escaped_characters_change():
    text = "ok\x1b]0;title\x07 \u202eevil"
    assert printable(text) == "ok\\x1b]0;title\\x07 \\u202eevil"
    assert printable(printable(text)) == printable(text)
