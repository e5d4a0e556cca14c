"""Tokenizing only as much of each text as truncation keeps: characters first, then tokens.

A 1 MB query truncated to 8192 tokens need not be tokenized whole. Each text is cut before a
space that follows a non-space character, at or beyond a character bound, and the cut is
tokenized with truncation. The M3 (XLM-RoBERTa) tokenizer splits its input at spaces before its
subword model sees it, and text before such a space normalises and tokenizes alike whatever
follows, so when the cut text already fills ``max_length`` tokens its truncated ids are exactly
those of the whole text. A cut that yields fewer tokens is widened (4x) until it does, or until
it is the whole text. A text with no space beyond the bound is tokenized whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

# A space preceded by a non-space: cutting there keeps no trailing whitespace.
_CUT_POINT = re.compile(r"(?<=\S) ")
# Characters per token to start from: English runs 4-5 per token in the M3 vocabulary.
_CHARS_PER_TOKEN = 8
_WIDEN = 4


def cut_text(text: str, chars: int) -> str:
    """``text`` up to the first cut point at or after ``chars`` characters (all of it if none).

    Anything but a string is returned as it is, for the tokenizer to refuse.
    """
    if not isinstance(text, str) or len(text) <= chars:
        return text
    found = _CUT_POINT.search(text, chars)
    return text if found is None else text[: found.start()]


def truncated_ids(
    texts: Sequence[str],
    max_length: int,
    tokenize: Callable[[list[str]], list[list[int]]],
) -> list[list[int]]:
    """``tokenize(texts)`` (a tokenizer truncating to ``max_length`` ids, special tokens
    included), computed on each text's shortest cut that gives the same ids."""
    out: list[list[int] | None] = [None] * len(texts)
    todo = list(range(len(texts)))
    chars = _CHARS_PER_TOKEN * max_length + 64
    while todo:
        cuts = [cut_text(texts[i], chars) for i in todo]
        wider = []
        for i, cut, ids in zip(todo, cuts, tokenize(cuts), strict=True):
            if len(ids) >= max_length or cut is texts[i]:
                out[i] = ids
            else:
                wider.append(i)
        todo = wider
        chars *= _WIDEN
    return out  # type: ignore[return-value]
