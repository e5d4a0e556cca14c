"""Long texts are cut to a character bound before tokenizing, with the ids of the whole text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers

from m3ingest.encoder import M3Encoder
from m3ingest.encoder.truncation import cut_text

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-m3"


@pytest.fixture(scope="module")
def encoder() -> M3Encoder:
    return M3Encoder(TINY, device="cpu", dtype="float32")


class _Recorder:
    """The real tokenizer, recording the length of every text it is given."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.given: list[list[int]] = []

    def __call__(self, texts, **kwargs):
        self.given.append([len(t) for t in texts])
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.fixture
def recorded() -> M3Encoder:
    enc = M3Encoder(TINY, device="cpu", dtype="float32")
    enc.tokenizer = _Recorder(enc.tokenizer)
    return enc


def _whole(enc: M3Encoder, texts: list[str], max_length: int) -> list[list[int]]:
    return enc.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def _texts_of_every_kind() -> list[str]:
    fixture = json.loads((FIXTURES / "tiny-m3-texts.json").read_text())
    cjk = "向量数据库支持混合检索。检索增强生成需要高质量的向量。"
    return [
        *fixture,
        max(fixture, key=len) * 4,  # ~55,000 characters
        cjk * 600,  # no space at all: tokenized whole
        " ".join([cjk] * 400),  # CJK with spaces
        ("word " + " " * 7 + "\t\n") * 3000,  # whitespace runs, tabs and newlines
        "   leading and trailing   " * 2000,
        "x" * 20000,  # one 20,000-character word
        "emoji 🚀 and ½ numbers 12345 " * 1500,
        "a" + " " * 5000 + "b c d " * 3000,
    ]


@pytest.mark.parametrize("max_length", [8, 16, 64, 512, 8192])
def test_ids_equal_those_of_the_whole_text_truncated(encoder, max_length):
    texts = _texts_of_every_kind()
    assert encoder.tokenize(texts, max_length) == _whole(encoder, texts, max_length)


def test_random_texts_with_whitespace_runs_and_scripts(encoder):
    rng = random.Random(5)
    texts = [_random_text(rng, rng.randint(1, 1000)) for _ in range(100)]
    for max_length in (8, 24, 100, 300):
        assert encoder.tokenize(texts, max_length) == _whole(encoder, texts, max_length)


def _random_text(rng: random.Random, words: int) -> str:
    pieces = ["the", "vector", "ß", "数据库", "검색", "🚀", "½", "x" * 30, ".", "''", "``"]
    gaps = [" ", "  ", "   ", "\t", "\n", " \n ", "\u3000", "\u00a0"]
    return "".join(rng.choice(pieces) + rng.choice(gaps) * (rng.random() < 0.8) for _ in range(words))


def _pipelines() -> dict[str, Tokenizer]:
    """The fixture's vocabulary behind each pipeline an M3 tokenizer can have: transformers 5's
    (whitespace split, then Metaspace) and the tokenizer.json ones transformers 4 runs."""
    out = {}
    for name, normalizer in {
        "whitespace-split": None,
        "metaspace": normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]),
        "metaspace-strip": normalizers.Sequence(
            [
                normalizers.NFKC(),
                normalizers.Strip(left=False, right=True),
                normalizers.Replace(Regex(" {2,}"), "▁"),
            ]
        ),
    }.items():
        tok = Tokenizer.from_file(str(TINY / "tokenizer.json"))
        if normalizer is not None:
            tok.normalizer = normalizer
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
        out[name] = tok
    return out


@pytest.mark.parametrize("pipeline", ["whitespace-split", "metaspace", "metaspace-strip"])
def test_text_before_a_cut_point_tokenizes_as_in_the_whole_text(pipeline):
    tok = _pipelines()[pipeline]
    rng = random.Random(8)
    for _ in range(40):
        text = _random_text(rng, rng.randint(2, 80))
        whole = tok.encode(text, add_special_tokens=False).ids
        for chars in range(0, len(text), 7):
            cut = cut_text(text, chars)
            ids = tok.encode(cut, add_special_tokens=False).ids
            assert whole[: len(ids)] == ids, (pipeline, text, cut)


def test_a_cut_after_a_space_would_change_the_ids():
    # Why cut points follow a non-space: a trailing space becomes a token of its own.
    tok = _pipelines()["metaspace"]
    text = "alpha  beta"
    whole = tok.encode(text, add_special_tokens=False).ids
    after_space = tok.encode(text[:6], add_special_tokens=False).ids
    assert whole[: len(after_space)] != after_space
    assert (
        whole[: len(tok.encode(cut_text(text, 3), add_special_tokens=False).ids)]
        == tok.encode(cut_text(text, 3), add_special_tokens=False).ids
    )


def test_a_1mb_query_is_cut_before_tokenizing(recorded):
    query = "Milvus and Qdrant store dense and sparse vectors for hybrid search. " * 15500
    assert len(query) > 1_000_000
    ids = recorded.tokenize([query], max_length=8192)[0]

    assert len(ids) == 8192 and ids[-1] == recorded.tokenizer.eos_token_id
    assert recorded.tokenizer.given == [[pytest.approx(8 * 8192 + 64, abs=80)]]
    # Same ids as a cut three times longer: the cut point does not change them.
    assert ids == _whole(recorded, [query[: 3 * 8 * 8192]], 8192)[0]


def test_a_cut_with_too_few_tokens_is_widened_until_exact(recorded):
    text = ("x" + " " * 40) * 3000  # ~41 characters per token: the first cut is far too short
    ids = recorded.tokenize([text], max_length=256)[0]

    given = [lengths[0] for lengths in recorded.tokenizer.given]
    assert len(given) >= 2 and given == sorted(given) and given[-1] < len(text)
    assert len(ids) == 256 and ids == _whole(recorded, [text], 256)[0]


def test_short_texts_are_given_whole(recorded):
    texts = ["hello world", "", "   ", "a b c " * 100]
    recorded.tokenize(texts, max_length=8192)
    assert recorded.tokenizer.given == [[len(t) for t in texts]]


def test_cut_points_follow_a_word_and_keep_no_trailing_space():
    assert cut_text("alpha beta gamma", 3) == "alpha"
    assert cut_text("alpha beta gamma", 5) == "alpha"
    assert cut_text("alpha    beta gamma", 7) == "alpha    beta"
    assert cut_text("alpha beta", 50) == "alpha beta"
    assert cut_text("向量数据库" * 10, 5) == "向量数据库" * 10
