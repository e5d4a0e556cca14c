"""The chunker gives exactly the chunks of the first released algorithm (kept here as the oracle).

Chunk ids derive from chunk text, so any change in where chunks start and end would re-encode
every user's collection; token ids must stay ``tokenizer(chunk.text)["input_ids"]``. ``OldChunker``
below is that algorithm, unchanged but for names, layout and a strict zip; it lives only in this module.

Besides the tiny checkpoint's tokenizer, the tests use two tokenizers of the real BGE-M3 (XLM-R)
structure over the same vocabulary: with the ``nmt_nfkc`` normalizer that sentencepiece compiles
into XLM-R's tokenizer (``fixtures/nmt-nfkc-charsmap.bin.xz``: the ``precompiled_charsmap`` of a
sentencepiece 0.2 model trained with ``normalization_rule_name="nmt_nfkc"``), and the layout that
current converters write (that normalizer, runs of spaces folded, no whitespace pre-split).
"""

from __future__ import annotations

import base64
import itertools
import json
import lzma
import random
import re
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from m3ingest import chunking
from m3ingest.chunking import Chunker, _scan_boundaries
from m3ingest.sources import Document, Section, extract, walk

from test_chunking import WORDS

FIXTURES = Path(__file__).parent / "fixtures"

# --- the oracle: the algorithm as first released --------------------------------------------------

_O_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_O_SENTENCE = re.compile(r"[.!?\u2026][\"')\]\u201d\u2019]*\s+|[\u3002\uff01\uff1f]\s*")
_O_LINE = re.compile(r"\n\s*")
_O_WORD = re.compile(r"\s+")
_O_NON_SPACE = re.compile(r"\S")
_O_BATCH = 256


class _OldPlan:
    def __init__(self, text: str, token_starts: list[int]) -> None:
        self.text = text
        self.starts = token_starts
        self.paragraph = [m.end() for m in _O_PARAGRAPH.finditer(text)]
        self.sentence = [m.end() for m in _O_SENTENCE.finditer(text)]
        self.line = [m.end() for m in _O_LINE.finditer(text)]
        self.word = [m.end() for m in _O_WORD.finditer(text)]

    def index(self, pos: int) -> int:
        return bisect_left(self.starts, pos)

    def count(self, a: int, b: int) -> int:
        return self.index(b) - self.index(a)

    def end_within(self, s: int, floor: int, budget: int, section_end: int) -> int:
        i0 = self.index(s)
        if self.index(section_end) - i0 <= budget:
            return section_end
        limit = self.starts[i0 + budget]
        half = (budget - self.count(s, floor)) // 2
        for level, min_tokens in ((self.paragraph, half), (self.sentence, half), (self.line, half), (self.word, 1)):
            k = bisect_right(level, limit) - 1
            if k >= 0 and level[k] > floor and self.count(floor, level[k]) >= min_tokens:
                return level[k]
        if limit > floor:
            return limit
        k = bisect_right(self.starts, floor)
        return min(self.starts[k], section_end) if k < len(self.starts) else section_end

    def overlap_start(self, s: int, e: int, overlap: int) -> int:
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


class OldChunker:
    """The first released chunking algorithm; ``chunk`` gives (index, text, start, end, headings, ids)."""

    def __init__(self, tokenizer: Any, chunk_size: int = 512, overlap: int = 64) -> None:
        self.chunk_size = chunk_size
        self.overlap = overlap
        self._backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()

    def chunk(self, doc: Document) -> list[tuple]:
        text = doc.text
        if not text.strip():
            return []
        plan = _OldPlan(text, [a for a, _ in self._backend.encode(text, add_special_tokens=False).offsets])
        chunks: list[tuple] = []
        for start, end, headings in _old_spans(doc):
            for s, e, ids in self._split(plan, start, end):
                chunks.append((len(chunks), text[s:e], s, e, headings, ids))
        return chunks

    def _end(self, plan: _OldPlan, s: int, floor: int, budget: int, end: int) -> int:
        e = plan.end_within(s, floor, budget, end)
        return s + len(plan.text[s:e].rstrip())

    def _next(self, plan: _OldPlan, s: int, e: int, end: int) -> tuple[int, int]:
        if _O_NON_SPACE.search(plan.text, e, end) is None:
            return end, end
        nxt = _O_NON_SPACE.search(plan.text, plan.overlap_start(s, e, self.overlap), end)
        return (nxt.start() if nxt else end), max(e, s + 1)

    def _split(self, plan: _OldPlan, start: int, end: int) -> list[tuple[int, int, list[int]]]:
        text = plan.text
        limit = self.chunk_size + 2
        reserve = 0
        out: list[tuple[int, int, list[int]]] = []
        m = _O_NON_SPACE.search(text, start, end)
        s = floor = m.start() if m else end
        while s < end:
            budget = self.chunk_size - reserve
            pieces = []
            a, f = s, floor
            while a < end and len(pieces) < _O_BATCH:
                e = self._end(plan, a, f, budget, end)
                pieces.append((a, e, f))
                a, f = self._next(plan, a, e, end)
            encodings = self._backend.encode_batch([text[a:e] for a, e, _ in pieces])
            for (a, e, f), enc in zip(pieces, encodings, strict=True):  # noqa: B007 (f is used after the loop)
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


def _old_spans(doc: Document) -> list[tuple[int, int, tuple[str, ...]]]:
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


# --- tokenizers -----------------------------------------------------------------------------------


def _tiny_json() -> dict:
    return json.loads((FIXTURES / "tiny-m3" / "tokenizer.json").read_text(encoding="utf-8"))


def _charsmap() -> str:
    return base64.b64encode(lzma.decompress((FIXTURES / "nmt-nfkc-charsmap.bin.xz").read_bytes())).decode()


def m3_structured(variant: str) -> PreTrainedTokenizerFast:
    """The tiny vocabulary in the layout of XLM-R's tokenizer (``xlmr``) or of current converters (``converter``)."""
    spec = _tiny_json()
    precompiled = {"type": "Precompiled", "precompiled_charsmap": _charsmap()}
    if variant == "xlmr":
        spec["normalizer"] = precompiled
    else:
        spec["normalizer"] = {
            "type": "Sequence",
            "normalizers": [precompiled, {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}],
        }
        spec["pre_tokenizer"] = {
            "type": "Metaspace",
            "replacement": "\u2581",
            "prepend_scheme": "always",
            "split": True,
        }
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))


@pytest.fixture(scope="module", params=["tiny", "xlmr", "converter"])
def tokenizer(request):
    if request.param == "tiny":
        return AutoTokenizer.from_pretrained(FIXTURES / "tiny-m3")
    return m3_structured(request.param)


@pytest.fixture(params=["default", "small-windows"])
def windows(request, monkeypatch):
    """The module's window sizes, or tiny ones so that short texts cross many windows and probes."""
    if request.param == "small-windows":
        monkeypatch.setattr(chunking, "_WINDOW", 700)
        monkeypatch.setattr(chunking, "_MARGIN", 24)
        monkeypatch.setattr(chunking, "_PROBE", 40)
        monkeypatch.setattr(chunking, "_SCAN", 200)
        monkeypatch.setattr(chunking, "_SCAN_SMALL", 100)
        monkeypatch.setattr(chunking, "_SCAN_BACK", 16)
    return request.param


# --- documents ------------------------------------------------------------------------------------

_PIECES = [
    *"abcdefgh",
    " ",
    " ",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\n \n",
    "\t",
    "\r",
    "\f",
    "\x0b",
    "\x1c",
    "\x85",
    "\u00a0",
    "\u2028",
    "\u3000",
    ".",
    "!",
    "?",
    ",",
    "-",
    "\u2026",
    '"',
    "'",
    ")",
    "]",
    "\u201d",
    "\u2019",
    "(",
    ". ",
    '." ',
    ".) ",
    "\u3002",
    "\uff01",
    "\uff1f",
    "\u65e5\u672c\u8a9e",
    "\u6587\u7ae0",
    "\u00e9",
    "e\u0301",
    "\ufb01",
    "\u2460",
    "\uff76",
    "\u00a8",
    "\U0001f642",
    "<s>",
    "</s>",
    "<mask>",
    "word ",
    "Word. ",
    "x" * 40,
    "\u2581",
    "``",
    "''",
]


# Characters the nmt_nfkc normalizer deletes. At the start of the text, or right after a literal
# special token, they shift the tokenizer's offsets for the rest of that stretch (a tokenizers
# bug): the first release planned from those shifted offsets over a whole document, a window that
# starts after them does not see the shift. Windowed tests leave them out (docs/sources.md).
_DELETED = ("\x0b", "\x1c")
_WINDOW_SAFE_PIECES = [p for p in _PIECES if p not in _DELETED]


def prose(rng: random.Random, n_paragraphs: int) -> str:
    paragraphs = []
    for _ in range(n_paragraphs):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 16))).capitalize() + rng.choice(".!?;")
            for _ in range(rng.randint(1, 7))
        ]
        paragraphs.append(" ".join(sentences))
    return rng.choice(["\n\n", "\n", "\n\n\n", "\n  \n"]).join(paragraphs)


def noise(rng: random.Random, n: int, pieces: list[str] = _PIECES) -> str:
    return "".join(rng.choice(pieces) for _ in range(n))


def random_document(rng: random.Random, pieces: list[str] = _PIECES) -> Document:
    kind = rng.choice(["prose", "noise", "mixed", "cjk", "long-words"])
    if kind == "prose":
        text = prose(rng, rng.randint(1, 30))
    elif kind == "noise":
        text = noise(rng, rng.randint(0, 1500), pieces)
    elif kind == "mixed":
        text = "".join(
            prose(rng, rng.randint(1, 4)) + noise(rng, rng.randint(1, 40), pieces) for _ in range(rng.randint(1, 8))
        )
    elif kind == "cjk":
        text = "".join(
            rng.choice(["\u6587\u7ae0\u3067\u3059", "\u3002", "\u65e5\u672c\u8a9e", "\uff01", " ", "\n", "abc"])
            for _ in range(rng.randint(10, 700))
        )
    else:
        text = " ".join(
            rng.choice(["a" * rng.randint(1, 300), "word", "-" * rng.randint(1, 90), "\n\n"])
            for _ in range(rng.randint(5, 60))
        )
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 8))))
    sections = [
        Section(a, b, (f"h{i}",))
        for i, (a, b) in enumerate(itertools.pairwise(cuts))
        if i % 2 == 0 or rng.random() < 0.3
    ]
    if rng.random() < 0.2:
        # Documents from custom extractors may break the rules: sections overlapping or past the end.
        sections.append(Section(rng.randint(0, len(text)), len(text) + rng.randint(0, 50), ("loose",)))
    return Document(text, sections)


def same(doc: Document, new: Chunker, old: OldChunker) -> None:
    got = [(c.index, c.text, c.start, c.end, c.headings, c.token_ids) for c in new.chunk(doc)]
    want = old.chunk(doc)
    assert got == want


SETTINGS = [(8, 0), (8, 7), (16, 4), (33, 5), (64, 16), (128, 100), (512, 64)]

# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "overlap"), [(8, 2), (24, 4), (40, 8), (512, 64)])
def test_fixture_documents(tokenizer, windows, size, overlap):
    new, old = Chunker(tokenizer, size, overlap), OldChunker(tokenizer, size, overlap)
    for item in walk(FIXTURES / "docs"):
        same(extract(item.path), new, old)


@pytest.mark.parametrize("seed", range(6))
def test_random_documents(tokenizer, windows, seed):
    rng = random.Random(seed)
    pieces = _PIECES if windows == "default" else _WINDOW_SAFE_PIECES
    for _ in range(12):
        doc = random_document(rng, pieces)
        size, overlap = rng.choice(SETTINGS)
        same(doc, Chunker(tokenizer, size, overlap), OldChunker(tokenizer, size, overlap))


@pytest.mark.parametrize(("size", "overlap"), [(16, 3), (128, 16), (512, 64)])
def test_long_prose_across_windows(tokenizer, size, overlap, monkeypatch):
    monkeypatch.setattr(chunking, "_WINDOW", 4000)
    monkeypatch.setattr(chunking, "_MARGIN", 64)
    rng = random.Random(size)
    text = prose(rng, 400) + " " + "x" * 9000 + " " + prose(rng, 50) + noise(rng, 3000, _WINDOW_SAFE_PIECES)
    doc = Document(text, [Section(100, 30000, ("a",)), Section(30000, len(text) - 10, ("b",))])
    same(doc, Chunker(tokenizer, size, overlap), OldChunker(tokenizer, size, overlap))


def test_iter_chunks_gives_the_same_chunks(tokenizer):
    doc = random_document(random.Random(99))
    chunker = Chunker(tokenizer, 16, 4)
    assert list(chunker.iter_chunks(doc)) == chunker.chunk(doc)


@pytest.mark.parametrize("seed", range(40))
def test_boundaries_match_the_patterns(seed):
    rng = random.Random(seed)
    text = noise(rng, rng.randint(0, 400)) if seed % 2 else prose(rng, 3) + noise(rng, 50)
    cuts = [0, *sorted({m.end() for m in chunking._CUT.finditer(text) if rng.random() < 0.2}), len(text)]
    got = [[] for _ in range(4)]
    for x, y in itertools.pairwise(cuts):
        for level, found in enumerate(got):
            found += _scan_boundaries(text, x, y, level).tolist()
    want = [[m.end() for m in p.finditer(text)] for p in (_O_PARAGRAPH, _O_SENTENCE, _O_LINE, _O_WORD)]
    assert got == want
