"""Finding a checkpoint in the ``BAAI/bge-m3`` layout and loading its head files safely."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

COLBERT_HEAD = "colbert_linear.pt"
SPARSE_HEAD = "sparse_linear.pt"
# Files a snapshot needs; the hub repo also holds ONNX exports and images that are not fetched.
_HUB_FILES = [
    "*.json",
    "*.model",
    "model.safetensors",
    "pytorch_model.bin",
    COLBERT_HEAD,
    SPARSE_HEAD,
]
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_HUB_TIMEOUT_S = 10.0


class CheckpointError(RuntimeError):
    """A checkpoint cannot be found, reached or loaded; the message says what to do."""


def resolve_checkpoint(model: str | os.PathLike[str]) -> Path:
    """The local directory holding ``model``: the directory itself, or a hub id's snapshot."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    name = str(model)
    if not _HUB_ID.match(name) or path.exists():
        raise CheckpointError(
            f"model {name!r} is neither a directory nor a Hugging Face hub id like 'BAAI/bge-m3'"
        )
    return _download(name)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    local = repo_id.split("/")[-1]
    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=_HUB_FILES,
                endpoint=endpoint,
                etag_timeout=_HUB_TIMEOUT_S,
            )
        )
    except Exception as exc:  # network, offline mode, auth, missing repo: all need the same advice
        raise CheckpointError(
            f"could not get {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Download it where the hub is reachable, e.g. "
            f"`hf download {repo_id} --local-dir ./{local}`, then pass that directory: "
            f"M3Encoder('./{local}'), `--model ./{local}` or M3INGEST_MODEL__NAME=./{local}"
        ) from exc


def load_linear_head(directory: Path, filename: str) -> dict[str, torch.Tensor] | None:
    """The state dict of a head file (tensors only, no arbitrary unpickling); None if absent."""
    path = directory / filename
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load head file {path}: {exc}") from exc
    if not isinstance(state, dict) or "weight" not in state:
        raise CheckpointError(f"head file {path} is not a Linear state dict (no 'weight' tensor)")
    return state


def missing_head_error(directory: Path, filename: str, output: str) -> CheckpointError:
    """The error for asking an output whose head file the checkpoint lacks."""
    return CheckpointError(
        f"{output} vectors need {directory / filename}, which is missing; use a complete "
        f"BAAI/bge-m3 checkpoint or ask only for the outputs it has (e.g. {output}=False)"
    )
