"""One short run on a CUDA machine: a random bge-m3-shaped checkpoint, bf16 vs fp32, tokens/s and MFU.

    python bench/gpu.py                 # on a GPU: 24 layers x 1024 hidden, 250002 vocab (~3 min on an H100)
    python bench/gpu.py --smoke         # tiny shapes on CPU, to check the script itself runs

It builds the checkpoint (cached), checks that bf16 keeps dense cosine >= 0.999 and the top-10
sparse tokens of fp32, then measures tokens/s of M3Encoder (dtype auto: bf16) and of
FlagEmbedding's M3Embedder (its fp16) on texts of exactly 512 and 8192 tokens, and the
model-FLOP utilisation against the card's dense bf16 peak (and the measured GEMM peak).
Targets on one H100: >= 2x FlagEmbedding's tokens/s, >= 50% MFU at 512 tokens in bf16.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from m3bench import (  # noqa: E402
    TINY_TOKENIZER,
    compare,
    fixed_length_corpus,
    gemm_peak,
    load_m3_embedder,
    mixed_corpus,
    model_flops,
    time_once,
)

from m3ingest.encoder import M3Encoder  # noqa: E402
from m3ingest.encoder.random_checkpoint import build_random_checkpoint  # noqa: E402

# Dense bf16 tensor-core peaks from the vendors' data sheets, FLOP/s.
SPEC_BF16_PEAK = {"H200": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}


def spec_peak(name: str) -> float | None:
    for key, value in SPEC_BF16_PEAK.items():
        if key in name:
            return value
    return None


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    p.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / ".cache")
    p.add_argument("--tokens", type=int, default=1 << 20, help="tokens per throughput run")
    p.add_argument("--batch-tokens", default="16384,65536", help="M3Encoder budgets tried; best reported")
    p.add_argument("--flag-batch-8192", type=int, default=16, help="FlagEmbedding batch at 8192 tokens")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)

    if args.smoke:
        device = torch.device("cpu")
        shape = {"layers": 2, "hidden": 64, "heads": 2, "vocab_size": 250002}
        lengths = (64, 256)
        args.tokens = min(args.tokens, 4096)
        check_texts = 8
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU visible to torch; run with --smoke to check the script on CPU")
        device = torch.device("cuda")
        shape = {"layers": 24, "hidden": 1024, "heads": 16, "vocab_size": 250002}
        lengths = (512, 8192)
        check_texts = 64
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    ckpt = build_random_checkpoint(
        args.cache / f"m3-random-L{shape['layers']}-H{shape['hidden']}-V{shape['vocab_size']}",
        TINY_TOKENIZER,
        **shape,
    )
    report: dict = {"device": name, "shape": shape, "checks": {}, "runs": {}}
    print(f"device: {name}; checkpoint {ckpt}", flush=True)

    # bf16 against fp32 on mixed-length texts.
    fp32 = M3Encoder(ckpt, device=str(device), dtype="float32")
    check = mixed_corpus(check_texts, fp32.tokenizer, long_tokens=1500)
    ref = fp32.encode(check, max_length=8192)
    del fp32
    release()
    ours = M3Encoder(ckpt, device=str(device), dtype="bfloat16")
    low = ours.encode(check, max_length=8192)
    agree = compare(ref.dense, ref.sparse, low.dense, low.sparse)
    report["checks"]["bf16_vs_fp32"] = agree
    ok = agree["dense_min_cosine"] >= 0.999
    print(f"bf16 vs fp32: {agree} -> dense cosine {'OK' if ok else 'BELOW 0.999'}", flush=True)

    config = ours.config
    peaks = {"gemm_bf16": gemm_peak(device, torch.bfloat16, size=8192 if device.type == "cuda" else 1024)}
    if spec_peak(name):
        peaks["spec_bf16"] = spec_peak(name)
    report["peaks"] = peaks
    print("peaks: " + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in peaks.items()), flush=True)
    peak = peaks.get("spec_bf16", peaks["gemm_bf16"])

    def record(label: str, seconds: float, tokens: int, flops: float) -> None:
        row = {"seconds": seconds, "tokens_per_s": tokens / seconds, "tflops": flops / seconds / 1e12,
               "mfu": flops / seconds / peak}
        report["runs"][label] = row
        print(f"  {label:<34} {row['tokens_per_s']:10.0f} tok/s {row['tflops']:7.1f} TFLOP/s "
              f"MFU {100 * row['mfu']:.1f}%", flush=True)

    M3Embedder = load_m3_embedder()
    for length in lengths:
        texts = fixed_length_corpus(max(2, args.tokens // length), ours.tokenizer, length)
        ids = ours.tokenize(texts, length)
        assert all(len(x) == length for x in ids), "texts shorter than the target length"
        tokens = sum(map(len, ids))
        flops = model_flops([length] * len(ids), config)
        print(f"{len(texts)} texts x {length} tokens:", flush=True)
        best = None
        for budget in [int(b) for b in args.batch_tokens.split(",")]:
            budget = max(budget, length)
            ours.encode(texts[:4], max_length=length, batch_tokens=budget)  # warm-up
            seconds, _ = time_once(lambda: ours.encode(texts, max_length=length, batch_tokens=budget), device)
            record(f"M3Encoder bf16 {length} (budget {budget})", seconds, tokens, flops)
            best = seconds if best is None else min(best, seconds)
        record(f"M3Encoder bf16 {length} best", best, tokens, flops)
        if M3Embedder is None:
            print("  FlagEmbedding not installed: `pip install --no-deps FlagEmbedding==1.4.2`")
            continue
        batch = 256 if length <= 512 else args.flag_batch_8192
        flag = M3Embedder(str(ckpt), use_fp16=True, devices=str(device) if device.type == "cpu" else "cuda:0",
                          passage_max_length=length, batch_size=batch)
        want = {"return_dense": True, "return_sparse": True}
        flag.encode(texts[:4], batch_size=4, max_length=length, **want)  # warm-up
        seconds, _ = time_once(lambda: flag.encode(texts, batch_size=batch, max_length=length, **want), device)
        record(f"FlagEmbedding fp16 {length} (batch {batch})", seconds, tokens, flops)
        ratio = report["runs"][f"FlagEmbedding fp16 {length} (batch {batch})"]["seconds"] / best
        report["runs"][f"ratio {length}"] = ratio
        print(f"  M3Encoder / FlagEmbedding at {length} tokens: {ratio:.2f}x", flush=True)
        flag = None  # drop FlagEmbedding's model before release() empties the CUDA cache
        release()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
