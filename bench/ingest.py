"""m3ingest against LangChain's index() + langchain-milvus + FlagEmbedding on one real corpus.

The corpus is Debian's Python documentation (about a thousand HTML pages and their reST sources):

    apt-get update && apt-get install -y python3-doc      # files under /usr/share/doc/python3*/html
    pip install --no-deps langchain-milvus langchain-text-splitters FlagEmbedding==1.4.2   # baseline

    python bench/ingest.py --files 60 --batch 256   # random 4x256 checkpoint: minutes on 2 cores
    python bench/ingest.py --files 0 --layers 24 --hidden 1024 --device cuda
    python bench/ingest.py --memory --memory-files 150 --skip-baseline   # peak RSS: 1x and 10x corpus,
                                                     # and the corpus with a 200 MB one-line file

Both sides read the same files, make the same chunks (the baseline's LangChain ``TextSplitter``
cuts with m3ingest's token-aware chunker, so both stores hold the same number of chunks), encode
them with the same checkpoint into dense + sparse vectors and write them to their own Milvus Lite
file, then run again with nothing changed. The baseline is what a user glues together today:
``index(..., cleanup="incremental")`` with an ``InMemoryRecordManager``, a ``Milvus`` store with
a dense ``Embeddings`` and a ``BaseSparseEmbedding``, each backed by FlagEmbedding's
``M3Embedder`` (langchain-milvus calls them one after the other: two forward passes per chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
TINY = REPO / "tests" / "fixtures" / "tiny-m3"
SUFFIXES = {".html", ".txt", ".rst", ".md"}


def find_corpus() -> Path | None:
    for folder in [Path("/usr/share/doc/python3/html"), *Path("/usr/share/doc").glob("python3*/html")]:
        if folder.is_dir() and len(list(folder.rglob("*.html"))) > 100:
            return folder.resolve()
    return None


def copy_corpus(src: Path, dest: Path, limit: int, copies: int = 1) -> int:
    """Copy the first ``limit`` documents of ``src`` (all when 0) ``copies`` times into ``dest``."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if limit:
        files = files[:limit]
    for copy in range(copies):
        for f in files:
            target = dest / f"copy{copy}" / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    return len(files) * copies


def run_m3ingest(corpus: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import m3ingest
    from m3ingest.config import Config
    from m3ingest.connectors import open_store
    from m3ingest.encoder import M3Encoder

    config = Config.model_validate(
        {
            "store": {"uri": str(work / "m3ingest.db"), "collection": "bench"},
            "model": {"name": args.model, "device": args.device, "dtype": args.dtype},
            "chunking": {"chunk_size": args.chunk_size, "overlap": args.overlap},
        }
    )
    encoder = M3Encoder(args.model, device=args.device, dtype=args.dtype)
    encoder.encode_ids([[0, 5, 2]])  # warm-up, as the baseline's
    t = time.perf_counter()
    first = m3ingest.ingest(corpus, config, encoder=encoder)
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    again = m3ingest.ingest(corpus, config, encoder=encoder)
    again_s = time.perf_counter() - t
    with open_store("milvus", config.store.uri) as store:
        chunks = store.count("bench")
    return {
        "first_s": first_s,
        "rerun_s": again_s,
        "chunks": chunks,
        "files_failed": first.files_failed,
        "tokens_encoded": first.tokens_encoded,
        "rerun_tokens_encoded": again.tokens_encoded,
    }


def run_langchain(corpus: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.indexing import InMemoryRecordManager, index
    from langchain_milvus import Milvus
    from langchain_milvus.utils.sparse import BaseSparseEmbedding
    from langchain_text_splitters import TextSplitter
    from m3bench import load_m3_embedder
    from transformers import AutoTokenizer

    from m3ingest.chunking import Chunker
    from m3ingest.sources import ExtractionError, Section, extract

    M3Embedder = load_m3_embedder()
    if M3Embedder is None:
        raise SystemExit("FlagEmbedding is missing: pip install --no-deps FlagEmbedding==1.4.2")
    use_fp16 = args.dtype in ("float16", "bfloat16")
    model = M3Embedder(
        args.model, use_fp16=use_fp16, devices=args.device or "cpu",
        passage_max_length=args.chunk_size + 2,
    )
    model.encode(["warm up"], return_dense=True, return_sparse=True)

    class Dense(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            out = model.encode(texts, batch_size=args.batch, max_length=args.chunk_size + 2)
            return out["dense_vecs"].tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    class Sparse(BaseSparseEmbedding):
        def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
            out = model.encode(
                texts, batch_size=args.batch, max_length=args.chunk_size + 2,
                return_dense=False, return_sparse=True,
            )
            return [{int(k): float(v) for k, v in w.items()} for w in out["lexical_weights"]]

        def embed_query(self, text: str) -> dict[int, float]:
            return self.embed_documents([text])[0]

    chunker = Chunker(AutoTokenizer.from_pretrained(args.model), args.chunk_size, args.overlap)

    class M3Splitter(TextSplitter):
        """The same chunks as m3ingest, behind LangChain's splitter interface."""

        def split_text(self, text: str) -> list[str]:
            from m3ingest.sources import Document as Doc

            doc = Doc(text=text, sections=[Section(0, len(text), ())], metadata={})
            return [c.text for c in chunker.chunk(doc)]

    splitter = M3Splitter()
    store = Milvus(
        embedding_function=[Dense(), Sparse()],
        vector_field=["dense", "sparse"],
        collection_name="bench",
        connection_args={"uri": str(work / "langchain.db")},
        index_params=[
            {"index_type": "FLAT", "metric_type": "IP"},
            {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "IP"},
        ],
        auto_id=False,
    )
    records = InMemoryRecordManager("bench")
    records.create_schema()

    def load() -> list[Document]:
        docs = []
        for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
            try:
                text = extract(path).text
            except ExtractionError:
                continue
            docs.append(Document(page_content=text, metadata={"source": str(path.relative_to(corpus))}))
        return splitter.split_documents(docs)

    def one_run() -> dict[str, Any]:
        return index(load(), records, store, cleanup="incremental", source_id_key="source",
                     batch_size=args.batch * 4)

    t = time.perf_counter()
    first = one_run()
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    again = one_run()
    again_s = time.perf_counter() - t
    chunks = store.client.get_collection_stats("bench")["row_count"]
    # index() drops chunks whose text and metadata repeat an earlier one of the same file.
    produced = first["num_added"] + first["num_skipped"]
    return {"first_s": first_s, "rerun_s": again_s, "chunks": chunks, "chunks_produced": produced,
            "first": first, "rerun": again}


def _tree_rss_mib(root: int) -> float:
    """Resident memory (MiB) of ``root`` and every process under it, read from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pages = int((entry / "statm").read_text().split()[1])
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat[stat.rindex(")") + 2 :].split()[1])
        rss[pid] = pages
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(rss.get(pid, 0) for pid in tree) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss(corpus: Path, work: Path, args: argparse.Namespace, *extra: str) -> dict[str, float]:
    """Peak resident memory (MiB) of ``m3ingest ingest`` over ``corpus`` in a fresh process: of the
    process itself, and of it with its prepare workers (sampled every 50 ms)."""
    import threading

    env = dict(os.environ, M3INGEST_MODEL__NAME=args.model, M3INGEST_MODEL__DTYPE=args.dtype)
    if args.device:
        env["M3INGEST_MODEL__DEVICE"] = args.device
    proc = subprocess.Popen(
        [sys.executable, "-c", "from m3ingest.cli import main; main()", "ingest", str(corpus),
         "--uri", str(work / "mem.db"), "--chunk-size", str(args.chunk_size),
         "--overlap", str(args.overlap), "--quiet", *extra],
        env=env,
    )
    tree = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal tree
        while not done.wait(0.05):
            tree = max(tree, _tree_rss_mib(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"m3ingest ingest {corpus} failed with status {status}")
    return {"process": usage.ru_maxrss / 1024, "with_workers": tree}


def one_line_file(path: Path, size: int) -> None:
    """A text file of ``size`` bytes on one line (words and spaces, no line break)."""
    words = b"vector store chunk record source encoder sparse dense hybrid query "
    block = words * (2**20 // len(words))
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(words[: size % len(block) % len(words)])


def memory(source: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of the 1x and the 10x corpus, and of the 1x corpus with one 200 MB one-line file
    (refused by the default max_file_bytes, then read with the limit raised past it)."""
    one, ten, line = work / "mem1", work / "mem10", work / "memline"
    copy_corpus(source, one, args.memory_files, copies=1)
    copy_corpus(source, ten, args.memory_files, copies=10)
    copy_corpus(source, line, args.memory_files, copies=1)
    one_line_file(line / "line.txt", args.line_mib * 2**20)
    out: dict[str, Any] = {"files_1x": args.memory_files, "line_mib": args.line_mib}
    out["1x"] = peak_rss(one, work / "m1", args)
    out["10x"] = peak_rss(ten, work / "m10", args)
    out["1x_with_line_refused"] = peak_rss(line, work / "ml", args)
    if args.line_raised:
        (work / "raised.toml").write_text(f"[sources]\nmax_file_bytes = {args.line_mib * 2**20 + 1}\n"
                                          f"max_text_chars = {args.line_mib * 2**20 + 1}\n")
        out["1x_with_line_read"] = peak_rss(line, work / "mr", args, "--config", str(work / "raised.toml"))
    for key in ("process", "with_workers"):
        base = out["1x"][key]
        out[f"increase_10x_{key}"] = out["10x"][key] / base - 1
        out[f"line_refused_extra_mib_{key}"] = out["1x_with_line_refused"][key] - base
        if args.line_raised:
            out[f"line_read_extra_mib_{key}"] = out["1x_with_line_read"][key] - base
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None, help="default: /usr/share/doc/python3*/html")
    parser.add_argument("--files", type=int, default=600, help="documents to take (0: all)")
    parser.add_argument("--model", default=None,
                        help="checkpoint (default: a random one in the bge-m3 layout, --layers x --hidden;"
                        " tests/fixtures/tiny-m3 measures only the overheads)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="the baseline's encoder batch size")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--memory", action="store_true", help="measure peak RSS for 1x and 10x")
    parser.add_argument("--memory-files", type=int, default=150)
    parser.add_argument("--line-mib", type=int, default=200, help="with --memory: the one-line file's size")
    parser.add_argument("--line-raised", action="store_true",
                        help="with --memory: also read the one-line file with the limits raised past it")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    source = args.corpus or find_corpus()
    if source is None:
        raise SystemExit("no corpus: apt-get install -y python3-doc, or give --corpus FOLDER")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model is None:
            from m3ingest.encoder.random_checkpoint import build_random_checkpoint

            args.model = str(build_random_checkpoint(
                work / "ckpt", TINY, layers=args.layers, hidden=args.hidden, heads=args.heads,
                vocab_size=250002,
            ))
        results: dict[str, Any] = {"corpus": str(source), "model": args.model, "device": args.device}
        corpus = work / "corpus"
        results["files"] = copy_corpus(source, corpus, args.files)
        results["m3ingest"] = run_m3ingest(corpus, work, args)
        print(json.dumps(results, indent=2, default=str), flush=True)
        if not args.skip_baseline:
            base = run_langchain(corpus, work, args)
            results["langchain"] = base
            results["first_run_ratio"] = base["first_s"] / results["m3ingest"]["first_s"]
            results["rerun_ratio"] = base["rerun_s"] / results["m3ingest"]["rerun_s"]
            results["same_chunks"] = base["chunks_produced"] == results["m3ingest"]["chunks"]
        if args.memory:
            results["memory"] = memory(source, work, args)
    print(json.dumps(results, indent=2, default=str))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
