"""Token-aware chunking with the tiny M3 tokenizer: offsets, boundaries, overlap, headings, limits."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from m3ingest.chunking import Chunk, Chunker
from m3ingest.sources import Document, Section, extract, walk

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(FIXTURES / "tiny-m3")


def check(doc: Document, chunks: list[Chunk], chunker: Chunker) -> None:
    """The invariants every chunking must keep."""
    tok = chunker.tokenizer
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
        assert c.text.strip() == c.text != ""
        assert c.token_ids == tok(c.text)["input_ids"]
        assert c.token_ids[0] == tok.cls_token_id and c.token_ids[-1] == tok.sep_token_id
        assert len(c.token_ids) <= chunker.chunk_size + 2
    for a, b in itertools.pairwise(chunks):
        assert (a.start, a.end) < (b.start, b.end)
    # Every visible character is in some chunk.
    gaps = [doc.text[a.end : b.start] for a, b in itertools.pairwise(chunks) if b.start > a.end]
    if chunks:
        gaps += [doc.text[: chunks[0].start], doc.text[chunks[-1].end :]]
    assert all(not g.strip() for g in gaps)
    # No chunk crosses a section boundary; each carries its section's headings.
    for c in chunks:
        inside = [s for s in doc.sections if s.start <= c.start and c.end <= s.end]
        if inside:
            assert c.headings == inside[0].headings
        else:
            assert c.headings == () and not any(s.start < c.end and c.start < s.end for s in doc.sections)


#: The words of the prose texts (tests/test_chunking_equivalence.py uses them too).
WORDS = [
    "the",
    "store",
    "keeps",
    "dense",
    "and",
    "sparse",
    "vectors",
    "for",
    "every",
    "chunk",
    "of",
    "each",
    "file",
    "in",
    "the",
    "folder",
]


def prose(n_paragraphs: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(n_paragraphs):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + rng.choice(".!?")
            for _ in range(rng.randint(1, 6))
        ]
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def test_short_document_is_one_chunk(tokenizer):
    doc = Document("  Hello world.  \n", [Section(0, 17)])
    (chunk,) = Chunker(tokenizer).chunk(doc)
    assert (chunk.text, chunk.start, chunk.end, chunk.headings) == ("Hello world.", 2, 14, ())


def test_blank_document_and_blank_sections_give_no_chunks(tokenizer):
    chunker = Chunker(tokenizer, chunk_size=32, overlap=4)
    assert chunker.chunk(Document("")) == []
    assert chunker.chunk(Document(" \n\n\t ")) == []
    text = "# A\n\n   \n# B\ntext"
    b = text.index("# B")
    doc = Document(text, [Section(0, 4, ("A",)), Section(4, b, ("A",)), Section(b, len(text), ("B",))])
    chunks = chunker.chunk(doc)
    assert [(c.text, c.headings) for c in chunks] == [("# A", ("A",)), ("# B\ntext", ("B",))]


@pytest.mark.parametrize(("size", "overlap"), [(8, 0), (16, 0), (32, 8), (64, 16), (128, 100), (512, 64)])
def test_invariants_on_prose(tokenizer, size, overlap):
    doc = Document(prose(40, seed=size))
    chunker = Chunker(tokenizer, chunk_size=size, overlap=overlap)
    chunks = chunker.chunk(doc)
    check(doc, chunks, chunker)
    assert len(chunks) > 1


def test_overlap_between_consecutive_chunks(tokenizer):
    doc = Document(prose(30, seed=1))
    with_overlap = Chunker(tokenizer, chunk_size=48, overlap=12).chunk(doc)
    without = Chunker(tokenizer, chunk_size=48, overlap=0).chunk(doc)
    assert all(b.start < a.end for a, b in itertools.pairwise(with_overlap))
    assert all(b.start >= a.end for a, b in itertools.pairwise(without))
    # The repeated text is about `overlap` tokens, never more than the chunk before it.
    for a, b in itertools.pairwise(with_overlap):
        shared = len(tokenizer(doc.text[b.start : a.end], add_special_tokens=False)["input_ids"])
        assert 0 < shared <= 14


def test_prefers_paragraph_then_sentence_boundaries(tokenizer):
    para = "Short sentence number {i} is here."
    text = "\n\n".join(para.format(i=i) for i in range(40))
    doc = Document(text)
    chunks = Chunker(tokenizer, chunk_size=100, overlap=0).chunk(doc)
    check(doc, chunks, Chunker(tokenizer, chunk_size=100, overlap=0))
    assert all(c.text.endswith(".") and (c.end == len(text) or text[c.end] == "\n") for c in chunks)
    one_paragraph = " ".join(para.format(i=i) for i in range(40))
    chunks = Chunker(tokenizer, chunk_size=100, overlap=0).chunk(Document(one_paragraph))
    assert len(chunks) > 3 and all(c.text.endswith(".") for c in chunks)


def test_falls_back_to_words_then_tokens(tokenizer):
    words = "alpha " * 500
    chunker = Chunker(tokenizer, chunk_size=50, overlap=10)
    chunks = chunker.chunk(Document(words))
    check(Document(words), chunks, chunker)
    assert all(c.text.startswith("alpha") and c.text.endswith("alpha") for c in chunks)
    no_spaces = "x" * 5000
    chunks = chunker.chunk(Document(no_spaces))
    check(Document(no_spaces), chunks, chunker)
    assert max(len(c.token_ids) for c in chunks) == 52


def test_very_long_single_line(tokenizer):
    line = ("word " * 50 + "and-a-very-long-token-" * 20) * 300  # 200 kB, no newline
    doc = Document(line)
    chunker = Chunker(tokenizer, chunk_size=512, overlap=64)
    first = chunker.chunk(doc)
    check(doc, first, chunker)
    assert first == chunker.chunk(doc)


def test_chunks_follow_sections_of_a_real_markdown_file(tokenizer):
    doc = extract(FIXTURES / "docs" / "guides" / "install.md")
    chunker = Chunker(tokenizer, chunk_size=24, overlap=4)
    chunks = chunker.chunk(doc)
    check(doc, chunks, chunker)
    by_text = {c.text: c.headings for c in chunks}
    assert any(h == ("Install", "From PyPI") and "pip install" in t for t, h in by_text.items())
    assert any(h == ("Usage", "Options") for h in by_text.values())


def test_every_fixture_document(tokenizer):
    chunker = Chunker(tokenizer, chunk_size=40, overlap=8)
    for item in walk(FIXTURES / "docs"):
        doc = extract(item.path)
        check(doc, chunker.chunk(doc), chunker)


def test_same_text_same_chunks_and_ids(tokenizer):
    chunker = Chunker(tokenizer, chunk_size=32, overlap=8)
    first, second = prose(6, seed=7), prose(6, seed=8)
    text = first + "\n\n" + second
    doc = Document(text, [Section(0, len(first), ("One",)), Section(len(first) + 2, len(text), ("Two",))])
    a = chunker.chunk(doc)
    assert a == chunker.chunk(doc)
    # An edit in one section leaves the chunks (text and ids) of the others as they were.
    edited = "New words here. " + first
    doc2 = Document(
        edited + "\n\n" + second,
        [Section(0, len(edited), ("One",)), Section(len(edited) + 2, len(edited) + 2 + len(second), ("Two",))],
    )
    b = chunker.chunk(doc2)

    def two(chunks):
        return [(c.text, c.token_ids) for c in chunks if c.headings == ("Two",)]

    assert two(a) == two(b) != []


def test_settings_are_checked(tokenizer):
    with pytest.raises(ValueError, match="overlap"):
        Chunker(tokenizer, chunk_size=64, overlap=64)
    with pytest.raises(ValueError, match="chunk_size"):
        Chunker(tokenizer, chunk_size=4, overlap=0)
    with pytest.raises(ValueError, match="fast tokenizer"):
        Chunker(object())


def test_random_documents_keep_the_invariants(tokenizer):
    rng = random.Random(42)
    alphabet = [*list("abcde fgh  \n\n\t.!?,-"), "é", "日本語", "。", "🙂", "\xa0", "word ", "\r"]
    for _ in range(30):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 1200)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        sections = [Section(a, b, (f"h{i}",)) for i, (a, b) in enumerate(itertools.pairwise(cuts)) if i % 2 == 0]
        doc = Document(text, sections)
        size = rng.choice([8, 16, 33, 128])
        chunker = Chunker(tokenizer, chunk_size=size, overlap=rng.randint(0, size - 1))
        check(doc, chunker.chunk(doc), chunker)


def test_iter_chunks_gives_chunks_one_by_one(tokenizer):
    doc = Document(prose(200, seed=3))
    chunker = Chunker(tokenizer, chunk_size=32, overlap=4)
    stream = chunker.iter_chunks(doc)
    first = next(stream)
    assert first.index == 0 and first.start < 200
    rest = list(stream)
    assert [first, *rest] == chunker.chunk(doc)
    assert all(type(i) is int for c in rest for i in c.token_ids) and isinstance(first.token_ids, list)


def test_text_without_whitespace_longer_than_any_window(tokenizer, monkeypatch):
    """A run read as one piece that no two windows agree on is cut anyway, and its chunks' ids are still exact."""
    from m3ingest import chunking

    monkeypatch.setattr(chunking, "_WINDOW", 700)
    monkeypatch.setattr(chunking, "_MARGIN", 24)
    monkeypatch.setattr(chunking, "_MAX_SPAN", 3000)
    rng = random.Random(5)
    text = (
        prose(20, seed=5) + " " + "".join(rng.choice("ab\u00e9\u65e5") for _ in range(20000)) + " " + prose(20, seed=6)
    )
    doc = Document(text)
    chunker = Chunker(tokenizer, chunk_size=64, overlap=8)
    check(doc, chunker.chunk(doc), chunker)


def test_memory_follows_the_window_not_the_text():
    """Chunking a 4 MB one-line text: the first release tokenized it whole (about 1.3 GB here)."""
    code = f"""
import resource
from transformers import AutoTokenizer
from m3ingest.chunking import Chunker
from m3ingest.sources import Document
text = ("the store keeps dense and sparse vectors for every chunk, in order. " * 60000)[: 4 * 2**20]
tok = AutoTokenizer.from_pretrained({str(FIXTURES / "tiny-m3")!r})
chunker = Chunker(tok, 512, 64)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = sum(1 for _ in chunker.iter_chunks(Document(text)))
print(n, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    chunks, grown_mib = map(int, done.stdout.split())
    assert chunks > 5000
    assert grown_mib < 200
