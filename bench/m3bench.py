"""Shared parts of the encoder benchmarks: corpus, FLOP counts, GEMM peak, FlagEmbedding, checks.

FlagEmbedding 1.4.2's package ``__init__`` imports every reranker and fails under transformers 5,
while its m3 module works; ``load_m3_embedder`` imports that module alone.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import math
import os
import random
import sys
import sysconfig
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
TINY_TOKENIZER = REPO / "tests" / "fixtures" / "tiny-m3"


def load_m3_embedder() -> Any | None:
    """FlagEmbedding's ``M3Embedder`` class, or None when FlagEmbedding is not installed."""
    spec = importlib.util.find_spec("FlagEmbedding")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = next(iter(spec.submodule_search_locations))
    if importlib.util.find_spec("datasets") is None:
        # Imported at module level by its fine-tuning code, never used for inference.
        placeholder = types.ModuleType("datasets")
        placeholder.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
        placeholder.__version__ = "0"
        placeholder.Dataset = object
        sys.modules["datasets"] = placeholder
    for name in (
        "FlagEmbedding",
        "FlagEmbedding.inference",
        "FlagEmbedding.inference.embedder",
        "FlagEmbedding.inference.embedder.encoder_only",
    ):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [os.path.join(root, *name.split(".")[1:])]
            sys.modules[name] = package
    return importlib.import_module("FlagEmbedding.inference.embedder.encoder_only.m3").M3Embedder


def _prose() -> list[str]:
    """Docstrings of the Python standard library: real English prose, present on every machine."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(" ".join(doc.split()))
    return texts


def mixed_corpus(n: int, tokenizer: Any, seed: int = 0, long_tokens: int = 1500) -> list[str]:
    """``n`` texts cut from stdlib prose: 40% of 16-64 tokens, 40% of 100-512, 20% of 800-``long_tokens``."""
    rng = random.Random(seed)
    words = " ".join(_prose()).split(" ")
    sample = " ".join(words[:2000])
    tokens_per_word = len(tokenizer(sample, add_special_tokens=False, verbose=False)["input_ids"]) / 2000
    texts = []
    for _ in range(n):
        kind = rng.random()
        lo, hi = (16, 64) if kind < 0.4 else (100, 512) if kind < 0.8 else (800, long_tokens)
        size = max(1, int(rng.randint(lo, hi) / tokens_per_word))
        start = rng.randrange(0, len(words) - size)
        texts.append(" ".join(words[start : start + size]))
    return texts


def _paragraphs(path: Path) -> list[str]:
    """Blank-line separated paragraphs of a text file that are mostly prose (letters and spaces)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for block in text.split("\n\n"):
        block = " ".join(block.split())
        if len(block) >= 40 and sum(c.isalpha() or c == " " for c in block) >= 0.8 * len(block):
            out.append(block)
    return out


def real_corpus(n: int, seed: int = 0, min_chars: int = 60, max_chars: int = 4000) -> list[str]:
    """``n`` real English texts of ``min_chars`` to ``max_chars`` characters (log-uniform).

    Cut from consecutive prose paragraphs of this repository's docs and README and of the text
    files under /usr/share/doc (READMEs, guides), at word boundaries.
    """
    files = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
    doc = Path("/usr/share/doc")
    if doc.is_dir():
        files += sorted(
            p
            for p in doc.rglob("*")
            if p.is_file() and (p.suffix in (".md", ".txt") or p.name.startswith("README")) and p.suffix != ".gz"
        )
    paragraphs = [para for f in files for para in _paragraphs(f)]
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        target = int(math.exp(rng.uniform(math.log(min_chars), math.log(max_chars))))
        start = rng.randrange(len(paragraphs))
        text = paragraphs[start]
        while len(text) < target and start + 1 < len(paragraphs):
            start += 1
            text += " " + paragraphs[start]
        cut = text[:target].rsplit(" ", 1)[0] if len(text) > target else text
        texts.append(cut if len(cut) >= min_chars else text[:target])
    return texts


def texts_of_lengths(lengths: Sequence[int], tokenizer: Any, seed: int = 0) -> list[str]:
    """Stdlib-prose texts of about ``lengths`` tokens each (by the corpus' tokens per word)."""
    rng = random.Random(seed)
    words = " ".join(_prose()).split(" ")
    sample = " ".join(words[:2000])
    tokens_per_word = len(tokenizer(sample, add_special_tokens=False, verbose=False)["input_ids"]) / 2000
    texts = []
    for length in lengths:
        size = max(1, int((length - 2) / tokens_per_word))
        start = rng.randrange(0, len(words) - size)
        texts.append(" ".join(words[start : start + size]))
    return texts


def chunk_mix(n: int, tokenizer: Any, seed: int = 0, size: int = 512) -> list[str]:
    """An ingest's chunks: 70% full ``size``-token chunks, 30% document tails of 16 to ``size``."""
    rng = random.Random(seed)
    lengths = [2 * size if rng.random() < 0.7 else rng.randint(16, size) for _ in range(n)]
    return texts_of_lengths(lengths, tokenizer, seed)


def long_mix(tokens: int, tokenizer: Any, seed: int = 0, longest: int = 8192) -> list[str]:
    """Texts of log-normal lengths (median ~700 tokens, 16 to ``longest``), ``tokens`` in all."""
    rng = random.Random(seed)
    lengths: list[int] = []
    while sum(lengths) < tokens:
        lengths.append(min(longest, max(16, int(rng.lognormvariate(6.5, 1.0)))))
    return texts_of_lengths(lengths, tokenizer, seed)


def model_flops(lengths: Sequence[int], config: Any, colbert_dim: int | None = None) -> float:
    """Multiply-add FLOPs of the model's matrix work on unpadded inputs of these lengths."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    n = np.asarray(lengths, dtype=np.float64)
    per_layer = 2 * n * (4 * h * h + 2 * h * inter) + 4 * n * n * h
    heads = 2 * n * h * (1 + (colbert_dim or 0))
    return float((layers * per_layer + heads).sum())


def gemm_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """Measured FLOP/s of large square matrix products on ``device`` in ``dtype``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    for _ in range(3):
        elapsed, runs = timed(lambda: a @ b, device, seconds / 3)
        best = max(best, 2 * size**3 * runs / elapsed)
    return best


def timed(fn: Callable[[], Any], device: torch.device, seconds: float) -> tuple[float, int]:
    """Run ``fn`` repeatedly for about ``seconds``; (elapsed seconds, runs)."""
    fn()
    sync(device)
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed, runs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def compare(dense_a, sparse_a, dense_b, sparse_b, top: int = 10) -> dict[str, float]:
    """How far two runs' outputs are apart: dense cosine and max difference, sparse agreement."""
    dense_a, dense_b = np.asarray(dense_a, np.float32), np.asarray(dense_b, np.float32)
    cos = (dense_a * dense_b).sum(1) / (np.linalg.norm(dense_a, axis=1) * np.linalg.norm(dense_b, axis=1))
    same_keys = sum({int(k) for k in a} == {int(k) for k in b} for a, b in zip(sparse_a, sparse_b, strict=True))
    worst = 0.0
    same_top = 0
    for a, b in zip(sparse_a, sparse_b, strict=True):
        a = {int(k): float(v) for k, v in a.items()}
        b = {int(k): float(v) for k, v in b.items()}
        worst = max([worst] + [abs(a[k] - b[k]) for k in a.keys() & b.keys()])
        same_top += set(sorted(a, key=a.get)[-top:]) == set(sorted(b, key=b.get)[-top:])
    return {
        "dense_min_cosine": float(cos.min()),
        "dense_max_abs_diff": float(np.abs(dense_a - dense_b).max()),
        "sparse_same_token_sets": same_keys / max(1, len(sparse_a)),
        "sparse_same_top10": same_top / max(1, len(sparse_a)),
        "sparse_max_abs_diff": worst,
    }


def fixed_length_corpus(n: int, tokenizer: Any, tokens: int, seed: int = 0) -> list[str]:
    """``n`` stdlib-prose texts long enough that truncation to ``tokens`` ids leaves exactly that."""
    rng = random.Random(seed)
    words = " ".join(_prose()).split(" ")
    sample = " ".join(words[:2000])
    tokens_per_word = len(tokenizer(sample, add_special_tokens=False, verbose=False)["input_ids"]) / 2000
    size = int(tokens / tokens_per_word * 1.3) + 16
    texts = []
    for _ in range(n):
        start = rng.randrange(0, len(words) - size)
        texts.append(" ".join(words[start : start + size]))
    return texts
