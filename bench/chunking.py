"""Chunker tokens/s against the fast tokenizer's own, and the chunker's memory on a 100 MB line.

    python bench/chunking.py                          # real .rst files found on this machine, ~3 min on 2 cores
    python bench/chunking.py --corpus DIR --big-mb 0  # another corpus; skip the 100 MB line
    python bench/chunking.py --tokenizer ./bge-m3     # a real checkpoint's tokenizer as well

Each document is timed back to back for (1) the tokenizer alone: ``encode`` of its text with its
ids and offsets read; (2) today's ``Chunker.chunk``; (3) the first released algorithm (the oracle
kept in tests/test_chunking_equivalence.py); ``--repeat`` turns, each document's best turn
counted, in CPU time (the process's threads: the first release also tokenizes on a thread pool)
and wall time. Ratios are tok/s over the tokenizer's, all from this run; tokens are the texts'
own (no special tokens), the same count for every contender.

Tokenizers: the tiny checkpoint's (225 pieces, about one token per character, the one the ingest
benchmarks use), and one trained here on the corpus in the layout of BGE-M3's (16,000 unigram
pieces, the nmt_nfkc normalizer, whitespace then metaspace pre-split): about 4-6 characters per
token like the real one, a few seconds to train.

The memory check runs in child processes: ``Chunker.iter_chunks`` over a one-line text of
``--big-mb`` MB (words and spaces, no newline), chunks dropped as they come, and the peak RSS
above the text itself; the first released algorithm over a 10 MB line for comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import lzma
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from m3ingest.chunking import Chunker  # noqa: E402
from m3ingest.sources import Document, ExtractionError, extract, supported_suffixes  # noqa: E402

TINY = REPO / "tests" / "fixtures" / "tiny-m3"
CHARSMAP = REPO / "tests" / "fixtures" / "nmt-nfkc-charsmap.bin.xz"
ORACLE = REPO / "tests" / "test_chunking_equivalence.py"
# Corpora tried in order when none is given: Python's HTML docs, CMake's reStructuredText help, Vim's help.
CANDIDATES = ("/usr/share/doc/python3.[0-9]*/html", "/usr/share/cmake*/Help", "/usr/share/vim/vim*/doc")


def find_corpus() -> tuple[Path, str]:
    for pattern in CANDIDATES:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[-1], "found on this machine"
    return REPO / "docs", "fallback: this repository's docs/ (no documentation corpus on this machine)"


def load_documents(root: Path, max_mb: float) -> list[Document]:
    docs: list[Document] = []
    size = 0
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in supported_suffixes() and p.is_file()):
        try:
            doc = extract(path)
        except ExtractionError:
            continue
        docs.append(doc)
        size += len(doc.text)
        if size > max_mb * 2**20:
            break
    return docs


def old_chunker_class() -> Any:
    spec = importlib.util.spec_from_file_location("chunking_oracle", ORACLE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.OldChunker


def trained_tokenizer(texts: list[str]) -> Any:
    """A 16k-piece unigram tokenizer in BGE-M3's layout, trained on ``texts``."""
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.Precompiled(lzma.decompress(CHARSMAP.read_bytes()))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(vocab_size=16000, special_tokens=specials, unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def per_document_best(
    contenders: dict[str, Callable[[Document], Any]], docs: list[Document], repeat: int
) -> dict[str, dict[str, float]]:
    """Seconds (wall and CPU, all of this process's threads) of each contender over ``docs``: each
    document timed back to back for every contender, ``repeat`` turns, the best turn of each
    document summed. Interleaving per document keeps a shared machine's load alike for all."""
    inf = float("inf")
    wall = {name: [inf] * len(docs) for name in contenders}
    cpu = {name: [inf] * len(docs) for name in contenders}
    for _ in range(repeat):
        for i, doc in enumerate(docs):
            for name, fn in contenders.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                fn(doc)
                wall[name][i] = min(wall[name][i], time.perf_counter() - start)
                cpu[name][i] = min(cpu[name][i], time.process_time() - start_cpu)
    return {"wall": {n: sum(v) for n, v in wall.items()}, "cpu": {n: sum(v) for n, v in cpu.items()}}


def throughput(
    tokenizer: Any, docs: list[Document], chunk_size: int, overlap: int, repeat: int, old: Any
) -> dict[str, Any]:
    backend = tokenizer.backend_tokenizer
    tokens = sum(len(backend.encode(d.text, add_special_tokens=False).ids) for d in docs)
    chunker = Chunker(tokenizer, chunk_size, overlap)
    oracle = old(tokenizer, chunk_size, overlap)
    same = [tuple(vars(c).values()) for d in docs for c in chunker.chunk(d)] == [
        c for d in docs for c in oracle.chunk(d)
    ]

    def tokenize(doc: Document) -> None:
        enc = backend.encode(doc.text, add_special_tokens=False)
        enc.ids, enc.offsets  # noqa: B018  (reading them is part of the tokenizer's cost)

    seconds = per_document_best(
        {"tokenizer": tokenize, "chunker": chunker.chunk, "first_release": oracle.chunk}, docs, repeat
    )
    out: dict[str, Any] = {
        "tokens": tokens,
        "characters": sum(len(d.text) for d in docs),
        "chunks": sum(len(chunker.chunk(d)) for d in docs),
        "same_chunks_as_first_release": same,
        "seconds": seconds,
    }
    for clock, times in seconds.items():
        rates = {name: tokens / t for name, t in times.items()}
        out[f"tokens_per_s_{clock}"] = rates
        out[f"{clock}_chunker_vs_tokenizer"] = rates["chunker"] / rates["tokenizer"]
        out[f"{clock}_first_release_vs_tokenizer"] = rates["first_release"] / rates["tokenizer"]
        out[f"{clock}_chunker_vs_first_release"] = rates["chunker"] / rates["first_release"]
    return out


_CHILD = """
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
from transformers import AutoTokenizer
from m3ingest.sources import Document
mb, which = {mb}, {which!r}
tok = AutoTokenizer.from_pretrained({tiny!r})
if which == "chunker":
    from m3ingest.chunking import Chunker
    chunk = lambda doc: sum(1 for _ in Chunker(tok, 512, 64).iter_chunks(doc))
else:
    import importlib.util
    spec = importlib.util.spec_from_file_location("oracle", {oracle!r})
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    chunk = lambda doc: len(m.OldChunker(tok, 512, 64).chunk(doc))
unit = "the store keeps dense and sparse vectors for every chunk of each file, in order. " * 64
doc = Document(unit * (mb * 2**20 // len(unit)))  # one line, built without a larger temporary
resident = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
start = time.perf_counter()
n = chunk(doc)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{
    "mb": mb, "chars": len(doc.text), "chunks": n, "seconds": time.perf_counter() - start,
    "rss_with_text_kib": resident, "peak_rss_kib": peak, "peak_above_text_mib": (peak - resident) / 1024,
}}))
"""


def memory(which: str, mb: int) -> dict[str, Any]:
    code = _CHILD.format(repo=str(REPO), mb=mb, which=which, tiny=str(TINY), oracle=str(ORACLE))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {
            "mb": mb,
            "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}",
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--corpus", type=Path, help="folder of documents (default: the first of {} found)".format(", ".join(CANDIDATES))
    )
    p.add_argument("--max-mb", type=float, default=4.0, help="stop adding documents past this much text")
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="turns per document; its best counts")
    p.add_argument("--tokenizer", type=Path, action="append", default=[], help="also a checkpoint's tokenizer folder")
    p.add_argument("--big-mb", type=int, default=100, help="size of the one-line text for the memory check (0: skip)")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "chunking.json")
    args = p.parse_args()

    from transformers import AutoTokenizer

    corpus, how = (args.corpus, "given") if args.corpus else find_corpus()
    docs = load_documents(corpus, args.max_mb)
    print(f"corpus {corpus} ({how}): {len(docs)} documents, {sum(len(d.text) for d in docs) / 2**20:.1f} MB of text")
    old = old_chunker_class()
    tokenizers = {"tiny-m3": AutoTokenizer.from_pretrained(TINY)}
    tokenizers["trained-16k-m3-layout"] = trained_tokenizer([d.text for d in docs])
    for path in args.tokenizer:
        tokenizers[path.name] = AutoTokenizer.from_pretrained(path)
    results: dict[str, Any] = {
        "corpus": str(corpus),
        "corpus_note": how,
        "documents": len(docs),
        "chunk_size": args.chunk_size,
        "overlap": args.overlap,
        "repeat": args.repeat,
        "machine": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))},
        "throughput": {},
    }
    for name, tok in tokenizers.items():
        r = throughput(tok, docs, args.chunk_size, args.overlap, args.repeat, old)
        results["throughput"][name] = r
        print(f"{name}: {r['tokens']} tokens, {r['chunks']} chunks, same chunks: {r['same_chunks_as_first_release']}")
        for clock in ("cpu", "wall"):
            rates = r[f"tokens_per_s_{clock}"]
            print(
                f"  {clock}: tokenizer {rates['tokenizer']:,.0f} tok/s; chunker {rates['chunker']:,.0f} "
                f"= {r[f'{clock}_chunker_vs_tokenizer']:.0%}; first release {rates['first_release']:,.0f} "
                f"= {r[f'{clock}_first_release_vs_tokenizer']:.0%} ({r[f'{clock}_chunker_vs_first_release']:.2f}x)"
            )
    if args.big_mb:
        results["memory"] = {"chunker": memory("chunker", args.big_mb), "first_release": memory("first_release", 10)}
        for name, m in results["memory"].items():
            print(f"memory, {name}: {m}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
