"""Token-aware chunking with the M3 tokenizer: paragraph, sentence, line and word boundaries first.

Each document is tokenized once with offsets to plan the chunks; each chunk's text is then
tokenized on its own, so ``Chunk.token_ids`` is exactly ``tokenizer(chunk.text)["input_ids"]``
(``<s> ... </s>``) and a chunk's ids depend on its text alone.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

from m3ingest.sources import Document

# Positions where a chunk may end (the start of the next piece), best first.
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"[.!?\u2026][\"')\]\u201d\u2019]*\s+|[\u3002\uff01\uff1f]\s*")
_LINE = re.compile(r"\n\s*")
_WORD = re.compile(r"\s+")
_NON_SPACE = re.compile(r"\S")
# Chunks planned and tokenized together before their lengths are checked.
_BATCH = 256


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: ``doc.text[start:end] == text``; ``token_ids`` include ``<s>`` and ``</s>``."""

    index: int
    text: str
    start: int
    end: int
    headings: tuple[str, ...]
    token_ids: list[int]


class _Plan:
    """Token starts and boundary positions of one document, for counting and choosing chunk ends."""

    def __init__(self, text: str, token_starts: list[int]) -> None:
        self.text = text
        self.starts = token_starts
        self.paragraph = [m.end() for m in _PARAGRAPH.finditer(text)]
        self.sentence = [m.end() for m in _SENTENCE.finditer(text)]
        self.line = [m.end() for m in _LINE.finditer(text)]
        self.word = [m.end() for m in _WORD.finditer(text)]

    def index(self, pos: int) -> int:
        """The number of tokens that start before ``pos``."""
        return bisect_left(self.starts, pos)

    def count(self, a: int, b: int) -> int:
        return self.index(b) - self.index(a)

    def end_within(self, s: int, floor: int, budget: int, section_end: int) -> int:
        """The best end for a chunk starting at ``s`` with at most ``budget`` tokens, beyond ``floor``."""
        i0 = self.index(s)
        if self.index(section_end) - i0 <= budget:
            return section_end
        limit = self.starts[i0 + budget]
        # A boundary must leave at least half of the room for new (not overlapping) tokens.
        half = (budget - self.count(s, floor)) // 2
        for level, min_tokens in ((self.paragraph, half), (self.sentence, half), (self.line, half), (self.word, 1)):
            k = bisect_right(level, limit) - 1
            if k >= 0 and level[k] > floor and self.count(floor, level[k]) >= min_tokens:
                return level[k]
        if limit > floor:
            return limit
        # Tokens sharing a start offset (e.g. a lone "▁" piece): take the next distinct start.
        k = bisect_right(self.starts, floor)
        return min(self.starts[k], section_end) if k < len(self.starts) else section_end

    def overlap_start(self, s: int, e: int, overlap: int) -> int:
        """Where the next chunk starts so that it repeats about ``overlap`` tokens before ``e``."""
        if overlap <= 0:
            return e
        ie = self.index(e)
        it = max(ie - overlap, self.index(s) + 1)
        if it >= ie:
            return e
        target = self.starts[it]
        for level, min_tokens in ((self.sentence, overlap // 2), (self.word, 1)):
            k = bisect_left(level, target)
            if k < len(level) and level[k] < e and self.count(level[k], e) >= min_tokens:
                return level[k] if level[k] > s else e
        return target if s < target < e else e


class Chunker:
    """Splits a ``Document`` into chunks of at most ``chunk_size`` tokens (plus ``<s>`` and ``</s>``).

    Chunks never cross a section boundary, so each has one heading path; consecutive chunks of a
    section share about ``overlap`` tokens. ``tokenizer`` is a Hugging Face fast tokenizer, e.g.
    ``M3Encoder.tokenizer``.
    """

    def __init__(self, tokenizer: Any, chunk_size: int = 512, overlap: int = 64) -> None:
        if chunk_size < 8:
            raise ValueError(f"chunk_size must be at least 8 tokens, got {chunk_size}")
        if not 0 <= overlap < chunk_size:
            raise ValueError(f"overlap must be between 0 and chunk_size - 1 ({chunk_size - 1}), got {overlap}")
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if not getattr(tokenizer, "is_fast", False) or backend is None:
            raise ValueError("Chunker needs a Hugging Face fast tokenizer (it uses character offsets)")
        self.tokenizer = tokenizer
        self.chunk_size = chunk_size
        self.overlap = overlap
        # A private copy: truncation or padding set on the shared tokenizer by other callers must not apply here.
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()

    def chunk(self, doc: Document) -> list[Chunk]:
        """The chunks of ``doc`` in text order; none is empty or whitespace only."""
        text = doc.text
        if not text.strip():
            return []
        plan = _Plan(text, [a for a, _ in self._backend.encode(text, add_special_tokens=False).offsets])
        chunks: list[Chunk] = []
        for start, end, headings in _spans(doc):
            for s, e, ids in self._split(plan, start, end):
                chunks.append(Chunk(len(chunks), text[s:e], s, e, headings, ids))
        return chunks

    def _end(self, plan: _Plan, s: int, floor: int, budget: int, end: int) -> int:
        e = plan.end_within(s, floor, budget, end)
        return s + len(plan.text[s:e].rstrip())

    def _next(self, plan: _Plan, s: int, e: int, end: int) -> tuple[int, int]:
        """Start and floor of the chunk after ``[s, e)``; the start is ``end`` when nothing is left."""
        if _NON_SPACE.search(plan.text, e, end) is None:
            return end, end
        nxt = _NON_SPACE.search(plan.text, plan.overlap_start(s, e, self.overlap), end)
        return (nxt.start() if nxt else end), max(e, s + 1)

    def _split(self, plan: _Plan, start: int, end: int) -> list[tuple[int, int, list[int]]]:
        """Chunks of ``text[start:end]`` as (start, end, token ids).

        Chunks are planned from the document's token offsets and then tokenized together; a chunk
        whose own tokenization comes out longer (it starts inside a word) is shrunk and the rest re-planned.
        """
        text = plan.text
        limit = self.chunk_size + 2
        # Tokens a chunk's own tokenization may add over the plan (e.g. a "▁" before a cut word); grows on misses.
        reserve = 0
        out: list[tuple[int, int, list[int]]] = []
        m = _NON_SPACE.search(text, start, end)
        s = floor = m.start() if m else end
        while s < end:
            budget = self.chunk_size - reserve
            pieces = []
            a, f = s, floor
            while a < end and len(pieces) < _BATCH:
                e = self._end(plan, a, f, budget, end)
                pieces.append((a, e, f))
                a, f = self._next(plan, a, e, end)
            encodings = self._backend.encode_batch([text[a:e] for a, e, _ in pieces])
            for (a, e, f), enc in zip(pieces, encodings):
                if len(enc.ids) > limit:
                    break
                out.append((a, e, enc.ids))
                s, floor = self._next(plan, a, e, end)
            else:
                continue
            ids = enc.ids
            while len(ids) > limit and budget > 1:
                reserve += len(ids) - limit
                budget = max(self.chunk_size - reserve, 1)
                e = self._end(plan, a, f, budget, end)
                ids = self._backend.encode(text[a:e]).ids
            out.append((a, e, ids))
            s, floor = self._next(plan, a, e, end)
        return out


def _spans(doc: Document) -> list[tuple[int, int, tuple[str, ...]]]:
    """The document's sections in order, with the text between them as sections without headings."""
    spans: list[tuple[int, int, tuple[str, ...]]] = []
    pos = 0
    for sec in sorted(doc.sections, key=lambda x: x.start):
        if sec.start > pos:
            spans.append((pos, sec.start, ()))
        start = max(sec.start, pos)
        if sec.end > start:
            spans.append((start, sec.end, sec.headings))
        pos = max(pos, sec.end)
    if pos < len(doc.text):
        spans.append((pos, len(doc.text), ()))
    return spans
