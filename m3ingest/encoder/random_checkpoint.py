"""Random checkpoints in the ``BAAI/bge-m3`` layout, for benchmarks and tests of the arithmetic."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_random_checkpoint(
    directory: Path,
    tokenizer_dir: Path,
    *,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    intermediate: int | None = None,
    vocab_size: int | None = None,
    max_positions: int = 8194,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised XLM-RoBERTa + M3 heads checkpoint to ``directory``.

    The tokenizer files are copied from ``tokenizer_dir``; ``vocab_size`` defaults to its size
    (a larger one only makes the embedding table realistic). An existing complete checkpoint
    is reused.
    """
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    directory = Path(directory)
    if (directory / "model.safetensors").is_file() and (directory / "sparse_linear.pt").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy(Path(tokenizer_dir) / name, directory / name)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id,
        type_vocab_size=1,
    )
    model = XLMRobertaModel(config, add_pooling_layer=False)
    model.save_pretrained(directory, safe_serialization=True)
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), directory / "colbert_linear.pt")
    torch.save(torch.nn.Linear(hidden, 1).state_dict(), directory / "sparse_linear.pt")
    return directory
