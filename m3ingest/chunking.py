"""Token-aware chunking with the M3 tokenizer: paragraph, sentence, line and word boundaries first.

A document's tokens (their character offsets) plan the chunks. Each chunk's ``token_ids`` are
exactly ``tokenizer(chunk.text)["input_ids"]`` (``<s> ... </s>``), so a chunk's ids depend on its
text alone. Long texts are tokenized window by window and their boundaries found range by range,
so the memory a document needs follows the window, not the text.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from m3ingest.sources import Document

_NON_SPACE = re.compile(r"\S")
# Where a chunk may end (the start of the next piece), best first: paragraph, sentence, line, word.
_PATTERNS = (
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"[.!?\u2026][\"')\]\u201d\u2019]*\s+|[\u3002\uff01\uff1f]\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"\s+"),
)
_PARAGRAPH, _SENTENCE, _LINE, _WORD = range(4)
# Where a boundary range may end: after a character that no boundary pattern involves (not
# whitespace, not sentence punctuation, not a closing quote or bracket).
_CUT = re.compile(r"[^\s.!?\u2026\"')\]\u201d\u2019\u3002\uff01\uff1f]")
# Chunks planned and tokenized together before their lengths are checked.
_BATCH = 256
# Characters of a document tokenized at once (and planned at once).
_WINDOW = 1 << 17
# Characters scanned for boundaries at once; below _SCAN_SMALL with the patterns themselves; how
# far back a scan may start before the first position asked for.
_SCAN, _SCAN_SMALL, _SCAN_BACK = 1 << 16, 1 << 11, 1 << 8
# Consecutive windows share 2 * _MARGIN characters (more when they disagree); they are joined
# where both give the same tokens, at least _MARGIN / 2 from either cut.
_MARGIN = 1 << 10
# A window that cannot be joined to the next grows up to this many characters before it is cut
# regardless (only text without whitespace over that length, read as one piece, gets there).
_MAX_SPAN = 1 << 23
# The words tokenized alone at each end of a chunk to check its own tokens against the document's:
# the first two and a character of the third (the last ones: the same over the reversed text),
# within at most _PROBE characters.
_PROBE_WORDS = re.compile(r"\S*\s+\S+\s+\S")
_PROBE = 256


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: ``doc.text[start:end] == text``; ``token_ids`` include ``<s>`` and ``</s>``."""

    index: int
    text: str
    start: int
    end: int
    headings: tuple[str, ...]
    token_ids: list[int]


class Chunker:
    """Splits a ``Document`` into chunks of at most ``chunk_size`` tokens (plus ``<s>`` and ``</s>``).

    Chunks never cross a section boundary, so each has one heading path; consecutive chunks of a
    section share about ``overlap`` tokens. ``tokenizer`` is a Hugging Face fast tokenizer, e.g.
    ``M3Encoder.tokenizer``, or the ``tokenizers.Tokenizer`` behind one (``backend_tokenizer``).
    One chunker may serve several threads at once.
    """

    def __init__(self, tokenizer: Any, chunk_size: int = 512, overlap: int = 64) -> None:
        from m3ingest.config import MIN_CHUNK_SIZE

        if chunk_size < MIN_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be at least {MIN_CHUNK_SIZE} tokens, got {chunk_size}")
        if not 0 <= overlap < chunk_size:
            raise ValueError(f"overlap must be between 0 and chunk_size - 1 ({chunk_size - 1}), got {overlap}")
        if isinstance(tokenizer, Tokenizer):
            backend = tokenizer
        elif getattr(tokenizer, "is_fast", False) and getattr(tokenizer, "backend_tokenizer", None) is not None:
            backend = tokenizer.backend_tokenizer
        else:
            raise ValueError(
                "Chunker needs a Hugging Face fast tokenizer or a tokenizers.Tokenizer (it uses character offsets)"
            )
        self.tokenizer = tokenizer
        self.chunk_size = chunk_size
        self.overlap = overlap
        # A private copy: truncation or padding set on the shared tokenizer by other callers must not apply here.
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self._specials = _special_ends(self._backend)

    def chunk(self, doc: Document) -> list[Chunk]:
        """The chunks of ``doc`` in text order; none is empty or whitespace only."""
        return list(self.iter_chunks(doc))

    def iter_chunks(self, doc: Document) -> Iterator[Chunk]:
        """The chunks of ``doc`` in text order, produced as they are made.

        The same chunks as ``chunk(doc)``; a caller can encode a long document part by part and
        stop between parts. Memory stays bounded by a window of the text, whatever its length.
        """
        text = doc.text
        if _NON_SPACE.search(text) is None:
            return
        plan = _Plan(self, text)
        for index, (s, e, headings, ids) in enumerate(plan.chunks(_spans(doc))):
            yield Chunk(index, text[s:e], s, e, headings, ids)


# A planned chunk: start, end, floor (where its end had to lie beyond), and the next chunk's start and floor.
_Piece = tuple[int, int, int, tuple[int, int]]


class _Section:
    """Where chunking of one section stands: the next chunk's start and floor, and the extra room
    its chunks' own tokenizations have needed so far."""

    def __init__(self, text: str, start: int, end: int, headings: tuple[str, ...]) -> None:
        m = _NON_SPACE.search(text, start, end)
        self.s = self.floor = m.start() if m else end
        self.end = end
        self.headings = headings
        self.reserve = 0


class _Plan:
    """Chooses the chunks of one document: where each ends, where the next starts, and its token ids."""

    def __init__(self, chunker: Chunker, text: str) -> None:
        self.text = text
        self.chunk_size = chunker.chunk_size
        self.overlap = chunker.overlap
        self.backend = chunker._backend
        self.specials = chunker._specials
        self.tokens = _Tokens(self.backend, text)
        self.bounds = _Boundaries(text)

    def chunks(
        self, spans: Iterable[tuple[int, int, tuple[str, ...]]]
    ) -> Iterator[tuple[int, int, tuple[str, ...], list[int]]]:
        """(start, end, headings, token ids) of the chunks of each section in ``spans``, in order.

        Chunks are planned from the document's token offsets, up to _BATCH at a time across
        sections, and then tokenized together; a chunk whose own tokenization comes out longer (it
        starts inside a word) is shrunk, and the rest of its section re-planned with that much
        more room.
        """
        pending = (_Section(self.text, start, end, headings) for start, end, headings in spans)
        queue: deque[_Section] = deque()
        while True:
            first = queue[0] if queue else next(pending, None)
            if first is None:
                return
            if not queue:
                queue.append(first)
            # Nothing before the next chunk's start or floor (which may lie before it) is asked for again.
            self.tokens.release(min(first.s, first.floor))
            self.bounds.release(min(first.s, first.floor))
            batch: list[tuple[_Section, list[_Piece]]] = []
            count = 0
            while True:
                sec = queue[len(batch)]
                pieces, finished = self._plan(sec, _BATCH - count, first.s + _WINDOW)
                batch.append((sec, pieces))
                count += len(pieces)
                if not finished or count >= _BATCH:
                    break
                if len(queue) == len(batch):
                    nxt = next(pending, None)
                    if nxt is None:
                        break
                    queue.append(nxt)
            yield from self._emit(batch, queue)

    def _emit(
        self, batch: list[tuple[_Section, list[_Piece]]], queue: deque[_Section]
    ) -> Iterator[tuple[int, int, tuple[str, ...], list[int]]]:
        """Tokenize the planned chunks and give them in order, up to the first that came out too
        long: that one is shrunk, and what was planned after it is dropped (planned again next)."""
        limit = self.chunk_size + 2
        ids_of = iter(self._ids([(a, e) for _, pieces in batch for a, e, _, _ in pieces]))
        for sec, pieces in batch:
            for a, e, f, nxt in pieces:
                ids = next(ids_of)
                if len(ids) > limit:
                    budget = self.chunk_size - sec.reserve
                    while len(ids) > limit and budget > 1:
                        sec.reserve += len(ids) - limit
                        budget = max(self.chunk_size - sec.reserve, 1)
                        e = self._end(a, f, budget, sec.end)
                        ids = self._ids([(a, e)])[0]
                    yield a, e, sec.headings, ids
                    sec.s, sec.floor = self._next(a, e, sec.end)
                    return
                yield a, e, sec.headings, ids
                sec.s, sec.floor = nxt
            if sec.s < sec.end:
                return
            queue.popleft()

    def _plan(self, sec: _Section, room: int, stop: int) -> tuple[list[_Piece], bool]:
        """Up to ``room`` chunks of ``sec`` as (start, end, floor, next start and floor), none
        starting at or past ``stop``; and whether they reach the section's end."""
        budget = self.chunk_size - sec.reserve
        pieces: list[_Piece] = []
        a, f = sec.s, sec.floor
        while a < sec.end and len(pieces) < room and a < stop:
            e = self._end(a, f, budget, sec.end)
            nxt = self._next(a, e, sec.end)
            pieces.append((a, e, f, nxt))
            a, f = nxt
        return pieces, a >= sec.end

    def _end(self, s: int, floor: int, budget: int, end: int) -> int:
        e = self._end_within(s, floor, budget, end)
        if e <= len(self.text) and not self.text[e - 1].isspace():
            return e
        return s + len(self.text[s:e].rstrip())

    def _end_within(self, s: int, floor: int, budget: int, section_end: int) -> int:
        """The best end for a chunk starting at ``s`` with at most ``budget`` tokens, beyond ``floor``."""
        tokens, bounds = self.tokens, self.bounds
        i0 = tokens.index(s)
        limit = tokens.start(i0 + budget)
        if limit is None or limit >= section_end:
            return section_end
        at_floor = tokens.index(floor)
        # A boundary must leave at least half of the room for new (not overlapping) tokens.
        half = (budget - (at_floor - i0)) // 2
        for level, min_tokens in ((_PARAGRAPH, half), (_SENTENCE, half), (_LINE, half), (_WORD, 1)):
            b = bounds.last_in(level, floor, limit)
            if b is not None and tokens.index(b) - at_floor >= min_tokens:
                return b
        if limit > floor:
            return limit
        # Tokens sharing a start offset (e.g. a lone "▁" piece): take the next distinct start.
        nxt = tokens.start(tokens.index(floor + 1))
        return section_end if nxt is None else min(nxt, section_end)

    def _overlap_start(self, s: int, e: int) -> int:
        """Where the next chunk starts so that it repeats about ``overlap`` tokens before ``e``."""
        overlap = self.overlap
        if overlap <= 0:
            return e
        tokens, bounds = self.tokens, self.bounds
        ie = tokens.index(e)
        it = max(ie - overlap, tokens.index(s) + 1)
        if it >= ie:
            return e
        target = tokens.start_of(it)
        for level, min_tokens in ((_SENTENCE, overlap // 2), (_WORD, 1)):
            b = bounds.first_in(level, target, e)
            if b is not None and ie - tokens.index(b) >= min_tokens:
                return b if b > s else e
        return target if s < target < e else e

    def _next(self, s: int, e: int, end: int) -> tuple[int, int]:
        """Start and floor of the chunk after ``[s, e)``; the start is ``end`` when nothing is left."""
        if _NON_SPACE.search(self.text, e, end) is None:
            return end, end
        nxt = _NON_SPACE.search(self.text, self._overlap_start(s, e), end)
        return (nxt.start() if nxt else end), max(e, s + 1)

    def _ids(self, spans: list[tuple[int, int]]) -> list[list[int]]:
        """``tokenizer(text[a:e])["input_ids"]`` for each span.

        A long span's ids are the document's own tokens, with its first and last words tokenized
        apart (alone, they may tokenize differently). Where the two do not line up, or the span is
        short, it is tokenized whole.
        """
        text = self.text
        jobs: list[str] = []
        probes: list[tuple[int, int] | None] = []
        for a, e in spans:
            head = tail = None
            if self.specials is not None:
                head = _PROBE_WORDS.match(text, a, min(e, a + _PROBE))
                tail = _PROBE_WORDS.match(text[max(a, e - _PROBE) : e][::-1]) if head else None
            if head and tail and head.end() < e - tail.end():
                probes.append((head.end(), e - tail.end()))
                jobs += (text[a : head.end()], text[e - tail.end() : e])
            else:
                probes.append(None)
                jobs.append(text[a:e])
        encodings = self._encode_all(jobs)
        out: list[list[int]] = []
        redo: list[int] = []
        k = 0
        for (a, e), probe in zip(spans, probes, strict=True):
            if probe is None:
                out.append(encodings[k].ids)
                k += 1
                continue
            ids = self._joined(a, e, probe[1], encodings[k], encodings[k + 1])
            k += 2
            if ids is None:
                redo.append(len(out))
                ids = []
            out.append(ids)
        if redo:
            for i, enc in zip(redo, self._encode_all([text[a:e] for a, e in (spans[i] for i in redo)]), strict=True):
                out[i] = enc.ids
        return out

    def _encode_all(self, texts: list[str]) -> list[Encoding]:
        # One by one: the texts are short (a chunk's first or last words, or a short chunk), and
        # documents are chunked side by side, so a thread pool per call would only add its cost.
        return [self.backend.encode(t) for t in texts]

    def _joined(self, a: int, e: int, tail_at: int, head: Encoding, tail: Encoding) -> list[int] | None:
        """The ids of ``text[a:e]`` from its head's tokens, the document's and its tail's, or None.

        The head (the span's first words, tokenized alone: starting like the span) gives the tokens
        before its second word; the tail (its last words, from ``tail_at``: ending like the span)
        those from its second word on; the document's tokens fill the middle. Each join needs the
        probe and the document to agree on the whole words between the probe's first and last.
        """
        pre, post = self.specials  # type: ignore[misc]
        h = _probe(head, len(pre), len(post))
        t = _probe(tail, len(pre), len(post))
        if h is None or t is None:
            return None
        i = self.tokens.agreeing(a, *h)
        j = self.tokens.agreeing(tail_at, *t)
        if i is None or j is None or j < i or not self.tokens.trusted(a, e):
            return None
        return [*pre, *h[0][: h[2]], *self.tokens.ids_between(i, j), *t[0][t[2] :], *post]


def _probe(enc: Encoding, pre: int, post: int) -> tuple[list[int], list[tuple[int, int]], int, int] | None:
    """A probe's ids and offsets (special tokens dropped), with the indices of the first token of
    its second word and of its last word: the tokens between are whole words, away from both cut
    ends. None if it has fewer than three words."""
    stop = len(enc.ids) - post
    words = enc.word_ids[pre:stop]
    n = len(words)
    second = next((k for k in range(1, n) if words[k] is None or words[k] != words[k - 1]), n)
    last = next((k for k in range(n - 1, second, -1) if words[k] is None or words[k] != words[k - 1]), second)
    if last <= second:
        return None
    return enc.ids[pre:stop], enc.offsets[pre:stop], second, last


class _Window:
    """One stretch of the text tokenized alone, from ``at``: the tokenizer's own offsets (from
    ``at``) and ids. Its tokens ``lo:hi`` are the document's, numbered from ``first``."""

    __slots__ = ("at", "first", "hi", "ids", "lo", "offsets")

    def __init__(self, at: int, enc: Encoding) -> None:
        self.at = at
        self.offsets: list[tuple[int, int]] = enc.offsets
        self.ids: list[int] = enc.ids
        self.lo, self.hi, self.first = 0, len(self.ids), 0

    def cut(self, pos: int) -> int:
        """The index of the first of its tokens ``lo:hi`` that starts at or after ``pos``."""
        # (x,) sorts before every (x, y): the first offset pair whose start is at or after pos.
        return bisect_left(self.offsets, (pos - self.at,), self.lo, self.hi)


class _Tokens:
    """The document's tokens (offsets and ids), tokenized window by window as far as asked.

    Consecutive windows overlap by ``_MARGIN`` characters and are joined where both tokenize the
    same way, past the effect of either cut; a window that never agrees with the next keeps
    growing (up to ``_MAX_SPAN``). Tokens before the current chunk are released. The tokenizer's
    own offset and id lists are kept as they come: reading them is most of what they cost.
    """

    def __init__(self, backend: Tokenizer, text: str) -> None:
        self.backend = backend
        self.text = text
        self.windows: list[_Window] = []
        self.forced: list[int] = []  # where windows were joined without agreeing (see _MAX_SPAN)
        self.done = 0  # every token that starts before `done` is held and final
        self.final = 0  # the number of the first token that is not final
        self.tokenized = 0  # where the text tokenized so far ends

    def index(self, pos: int) -> int:
        """The number of tokens that start before ``pos``."""
        while pos > self.done <= len(self.text):
            self._extend()
        return self._count(pos)

    def start(self, i: int) -> int | None:
        """The start offset of token ``i``, or None past the last token."""
        while i >= self.final and self.done <= len(self.text):
            self._extend()
        return self.start_of(i) if i < self.final else None

    def start_of(self, i: int) -> int:
        """The start offset of token ``i``, one that ``index`` has counted."""
        w = self._holding(i)
        return w.at + w.offsets[w.lo + i - w.first][0]

    def ids_between(self, i: int, j: int) -> list[int]:
        """The ids of tokens ``i:j``."""
        out: list[int] = []
        for w in self.windows:
            a, b = max(i, w.first), min(j, w.first + w.hi - w.lo)
            if a < b:
                out += w.ids[w.lo + a - w.first : w.lo + b - w.first]
        return out

    def agreeing(self, at: int, ids: list[int], offsets: list[tuple[int, int]], k: int, m: int) -> int | None:
        """The number of the token where a probe's token ``k`` starts, if the document's tokens
        from there have the ids of the probe's ``k:m`` and the next one starts where the probe's
        ``m`` does (the probe's offsets counted from ``at``); else None."""
        pos = at + offsets[k][0]
        i = self.index(pos)
        n = m - k
        if self.start(i + n) != at + offsets[m][0] or self.start_of(i) != pos or self.ids_between(i, i + n) != ids[k:m]:
            return None
        return i

    def trusted(self, lo: int, hi: int) -> bool:
        """Whether no forced join lies in ``[lo, hi]``: there the tokens may not be the text's own."""
        return not any(lo <= p <= hi for p in self.forced)

    def release(self, pos: int) -> None:
        """Forget the tokens that start before ``pos`` (no longer asked for)."""
        while self.windows:
            w = self.windows[0]
            k = min(w.cut(pos), w.lo + self.final - w.first)
            w.first += k - w.lo
            w.lo = k
            if w.lo < w.hi or len(self.windows) == 1:
                return
            self.windows.pop(0)

    def _holding(self, i: int) -> _Window:
        for w in reversed(self.windows):
            if i >= w.first:
                return w
        return self.windows[0]

    def _count(self, pos: int) -> int:
        for w in reversed(self.windows):
            k = w.cut(pos)
            if k > w.lo:
                return w.first + k - w.lo
        return self.windows[0].first if self.windows else 0

    def _encode(self, at: int, end: int) -> _Window:
        return _Window(at, self.backend.encode(self.text[at:end], add_special_tokens=False))

    def _extend(self) -> None:
        """Tokenize the next window and move ``done`` forward."""
        n = len(self.text)
        if not self.windows:
            d = min(n, _WINDOW)
            self.windows.append(self._encode(0, d))
            self.tokenized = d
            self._settle(0 if d < n else n + 1)
            return
        last = self.windows[-1]
        overlap = 2 * _MARGIN
        p: int | None = None
        while p is None:
            c = max(last.at, self.tokenized - overlap)
            d = min(n, max(c + _WINDOW, self.tokenized + _MARGIN))
            new = self._encode(c, d)
            if c == last.at:
                # The same left context as the held window and more text after: better wherever both reach.
                p = self.done
            else:
                p = self._agreement(last, new, c + overlap // 4, self.tokenized - overlap // 4)
            if p is None and d - last.at > _MAX_SPAN:
                p = max(self.done, (c + self.tokenized) // 2)
                self.forced.append(p)
            overlap *= 4
        last.hi = last.cut(p)
        new.lo = new.cut(p)
        new.first = last.first + last.hi - last.lo
        if last.lo == last.hi:
            self.windows.pop()
        self.windows.append(new)
        self.tokenized = d
        self._settle(p if d < n else n + 1)

    def _settle(self, done: int) -> None:
        self.done = done
        last = self.windows[-1]
        self.final = last.first + last.hi - last.lo if done > len(self.text) else self._count(done)

    def _agreement(self, last: _Window, new: _Window, lo: int, hi: int) -> int | None:
        """Where to join ``new`` to ``last``: a token start within the run of tokens (starts and
        ids) that both give last in ``[lo, hi)``, if that run is more than a few tokens long."""
        lo = max(lo, self.done)
        if hi <= lo:
            return None
        runs = []
        for w in (last, new):
            a, b = w.cut(lo), w.cut(hi)
            starts = np.fromiter(chain.from_iterable(w.offsets[a:b]), np.int64, 2 * (b - a))[::2] + w.at
            runs.append((starts, np.array(w.ids[a:b], np.int64)))
        (sa, ia), (sb, ib) = runs
        run = min(len(sa), len(sb))
        same = (sa[len(sa) - run :] == sb[len(sb) - run :]) & (ia[len(ia) - run :] == ib[len(ib) - run :])
        differ = np.flatnonzero(~same)
        agreed = sb[len(sb) - run :][int(differ[-1]) + 1 if len(differ) else 0 :]
        # Join at a start that the run's previous token does not share, so both sides split there alike.
        fresh = np.flatnonzero(agreed[1:] != agreed[:-1]) + 1
        if not len(fresh) or len(agreed) - fresh[0] < 4:
            return None
        return int(agreed[fresh[0]])


# Character classes of the boundary patterns, by code point (those past U+FFFF are none of them).
_WS, _NL, _BLANK, _CLOSER, _STOP, _CJK_STOP = 1, 2, 4, 8, 16, 32
_CLASSES = np.zeros(0x10000, np.uint8)
for _c in range(0x10000):
    if chr(_c).isspace():
        _CLASSES[_c] |= _WS
for _chars, _bit in (
    ("\n", _NL),
    (" \t", _BLANK),
    ("\"')]\u201d\u2019", _CLOSER),
    (".!?\u2026", _STOP),
    ("\u3002\uff01\uff1f", _CJK_STOP),
):
    for _ch in _chars:
        _CLASSES[ord(_ch)] |= _bit
_CLASSES[0xFFFF] = 0


def _scan_boundaries(text: str, x: int, y: int, level: int) -> np.ndarray:
    """The boundaries of ``level`` in ``text[x:y]``, as absolute positions.

    The same positions as ``m.end()`` of that level's pattern in ``_PATTERNS`` over the whole
    text, given that ``x`` and ``y`` are cut points: the start or end of the text, or just after
    a character none of the patterns involves. Every match ends where a run of whitespace does
    (or just after a CJK full stop); what tells the levels apart is what the run holds or follows.
    """
    sub = text[x:y]
    if sub.isascii():
        codes = np.frombuffer(sub.encode("ascii"), np.uint8)
    else:
        codes = np.minimum(np.frombuffer(sub.encode("utf-32-le"), np.uint32), 0xFFFF)
    del sub
    cls = _CLASSES[codes]
    del codes
    n = len(cls)
    ws = (cls & _WS) != 0
    if n == 0:
        return np.empty(0, np.int64)
    ends = np.flatnonzero(ws & ~np.concatenate((ws[1:], [False]))) + 1  # where each whitespace run ends
    if level == _WORD:
        return x + ends
    starts = ws & ~np.concatenate(([False], ws[:-1]))
    firsts = np.flatnonzero(starts)  # first character of each run
    run = np.cumsum(starts) - 1  # run number of each whitespace character
    newline = (cls & _NL) != 0
    found = np.zeros(len(firsts), bool)
    if level == _LINE:
        found[run[newline]] = True
        return x + ends[found]
    if level == _PARAGRAPH:
        # Two newlines with only spaces and tabs between them.
        solid = np.flatnonzero((cls & _BLANK) == 0)
        found[run[solid[1:][newline[solid[1:]] & newline[solid[:-1]]]]] = True
        return x + ends[found]
    # A run after sentence punctuation and any closing quotes or brackets.
    last_not_closer = np.maximum.accumulate(np.where((cls & _CLOSER) == 0, np.arange(n), -1))
    before = np.where(firsts > 0, last_not_closer[np.maximum(firsts - 1, 0)], -1)
    found = (before >= 0) & ((cls[np.maximum(before, 0)] & _STOP) != 0)
    # A CJK full stop ends a sentence right after it, or after the whitespace that follows it.
    cjk = np.flatnonzero(cls & _CJK_STOP) + 1
    spaced = cjk < n
    spaced[spaced] = ws[cjk[spaced]]
    cjk_ends = cjk.copy()
    cjk_ends[spaced] = ends[run[cjk[spaced]]]
    return x + np.union1d(ends[found], cjk_ends)


class _Boundaries:
    """Paragraph, sentence, line and word ends (where a chunk may end), found as asked: each
    level range by range, only where a chunk needs it (a section that is one chunk needs none)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.levels = [_Level() for _ in range(4)]

    def last_in(self, level: int, lo: int, hi: int) -> int | None:
        """The last boundary of ``level`` in ``(lo, hi]``."""
        ends = self._held(level, lo, hi)
        k = int(ends.searchsorted(hi, "right")) - 1
        return int(ends[k]) if k >= 0 and ends[k] > lo else None

    def first_in(self, level: int, lo: int, hi: int) -> int | None:
        """The first boundary of ``level`` in ``[lo, hi)``."""
        ends = self._held(level, lo, hi)
        k = int(ends.searchsorted(lo, "left"))
        return int(ends[k]) if k < len(ends) and ends[k] < hi else None

    def release(self, pos: int) -> None:
        """Forget the boundaries before ``pos`` (no chunk may end there any more)."""
        for held in self.levels:
            if pos > held.lo:
                held.ends = held.ends[int(held.ends.searchsorted(pos, "left")) :]
                held.lo = min(pos, held.done)

    def _held(self, level: int, lo: int, hi: int) -> np.ndarray:
        held = self.levels[level]
        if not held.lo <= lo <= held.done:
            # Start again from a cut point at or before lo.
            m = _CUT.search(self.text, max(0, lo - _SCAN_BACK), lo)
            held.lo = held.done = m.end() if m else (held.done if held.done <= lo else 0)
            held.ends = np.empty(0, np.int64)
        n = len(self.text)
        while hi > held.done <= n:
            x = held.done
            m = _CUT.search(self.text, max(hi, x + _SCAN)) if max(hi, x + _SCAN) < n else None
            y = m.end() if m else n
            if y - x < _SCAN_SMALL:
                # Below a few thousand characters, numpy's fixed cost per call outweighs the pattern's per match.
                found = np.fromiter((m.end() for m in _PATTERNS[level].finditer(self.text, x, y)), np.int64)
            else:
                found = _scan_boundaries(self.text, x, y, level)
            held.ends = np.concatenate((held.ends, found))
            held.done = y if y < n else n + 1
        return held.ends


class _Level:
    """The boundaries of one level held: every one in ``[lo, done]``."""

    def __init__(self) -> None:
        self.lo = self.done = 0
        self.ends = np.empty(0, np.int64)


def _special_ends(backend: Tokenizer) -> tuple[list[int], list[int]] | None:
    """The ids the tokenizer puts before and after any text's own (``<s>``, ``</s>``), or None if
    its special tokens are not simply that."""
    found = None
    for sample in ("x", "two words", "a, b. C"):
        plain = backend.encode(sample, add_special_tokens=False).ids
        full = backend.encode(sample).ids
        at = next((k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain), None)
        if not plain or at is None or found not in (None, (full[:at], full[at + len(plain) :])):
            return None
        found = (full[:at], full[at + len(plain) :])
    return found


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
