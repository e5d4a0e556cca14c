"""Finding a checkpoint in the ``BAAI/bge-m3`` layout, naming its exact version, reading its width.

Nothing here imports torch: fast commands use it before (or without) loading the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from m3ingest.errors import ConfigError

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
# owner/name, neither part starting with '.' or '-' (so './x' and '../x' are paths, not ids).
_HUB_ID = re.compile(r"^(?![.-])[\w.-]+/(?![.-])[\w.-]+$")
_HUB_TIMEOUT_S = 10.0
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MODEL_HELP = "the --model option, M3INGEST_MODEL__NAME or model.name in the configuration"

# What a local checkpoint's fingerprint covers: the files the encoder loads (config, tokenizer,
# weights, heads), not READMEs or ONNX exports beside them.
_FINGERPRINTED = {".json", ".model", ".txt", ".safetensors", ".bin", ".pt"}
# Files up to this size are hashed whole; larger ones (the weights) by name, size and samples.
_HASH_WHOLE_BYTES = 64 << 20
_SAMPLE_EDGE_BYTES = 1 << 20
_SAMPLE_BLOCKS = 16
_SAMPLE_BLOCK_BYTES = 64 << 10


class CheckpointError(ConfigError):
    """A checkpoint cannot be found, reached or loaded; the message says what to do."""


def resolve_checkpoint(model: str | os.PathLike[str], revision: str | None = None) -> Path:
    """The local directory holding ``model``: the directory itself, or a hub id's snapshot.

    ``revision`` (a hub branch, tag or commit) picks the hub snapshot; the hub is asked which
    commit it names, so a moved branch is followed.
    """
    path = _local_directory(model, revision)
    if path is not None:
        return path
    return _download(str(model), revision)


def cached_checkpoint(model: str | os.PathLike[str], revision: str | None = None) -> Path | None:
    """Like ``resolve_checkpoint`` without the network: a local directory, the hub id's snapshot
    already in the Hugging Face cache (for ``revision`` as last resolved), or None."""
    path = _local_directory(model, revision)
    if path is not None:
        return path
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(
            snapshot_download(str(model), revision=revision, allow_patterns=_HUB_FILES, local_files_only=True)
        )
    except Exception:  # not cached (or a partial cache): the caller downloads
        return None
    return snapshot if (snapshot / "config.json").is_file() else None


def model_dim(path: str | os.PathLike[str]) -> int:
    """The dense vector width of the checkpoint in ``path`` (config.json's hidden_size)."""
    config = Path(path) / "config.json"
    try:
        return int(json.loads(config.read_text(encoding="utf-8"))["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"cannot read hidden_size from {config} ({type(exc).__name__}: {exc}); point "
            f"{_MODEL_HELP} at a directory in the BAAI/bge-m3 layout"
        ) from exc


def fingerprint(path: str | os.PathLike[str]) -> str:
    """A string that changes whenever the checkpoint in ``path`` does.

    For a Hugging Face hub snapshot, its commit hash (40 hex digits). For any other directory,
    a SHA-256 (64 hex digits) over the config, tokenizer and head files and, for files over
    64 MiB (the weights), their name, size and 3 MiB sampled from start, end and between: any
    retraining changes every tensor, so the samples change, without reading gigabytes per run.
    """
    directory = Path(path)
    resolved = directory.resolve()
    if (
        _COMMIT.match(resolved.name)
        and resolved.parent.name == "snapshots"
        and resolved.parent.parent.name.startswith("models--")
    ):
        return resolved.name
    if not directory.is_dir():
        raise CheckpointError(f"cannot fingerprint {directory}: not a directory; check {_MODEL_HELP}")
    digest = hashlib.sha256()
    for file in sorted(directory.iterdir()):
        if file.suffix not in _FINGERPRINTED or not file.is_file():
            continue
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as f:
            if size <= _HASH_WHOLE_BYTES:
                digest.update(hashlib.sha256(f.read()).digest())
                continue
            for offset, length in _samples(size):
                f.seek(offset)
                digest.update(f.read(length))
    return digest.hexdigest()


def missing_head_error(directory: Path, filename: str, output: str) -> CheckpointError:
    """The error for asking an output whose head file the checkpoint lacks."""
    return CheckpointError(
        f"{output} vectors need {directory / filename}, which is missing; use a complete "
        f"BAAI/bge-m3 checkpoint or ask only for the outputs it has (e.g. {output}=False)"
    )


def _samples(size: int) -> list[tuple[int, int]]:
    """(offset, length) of what a large file's fingerprint reads: its first and last MiB and
    evenly spaced blocks between them."""
    step = (size - 2 * _SAMPLE_EDGE_BYTES) // (_SAMPLE_BLOCKS + 1)
    middle = [(_SAMPLE_EDGE_BYTES + step * (k + 1), _SAMPLE_BLOCK_BYTES) for k in range(_SAMPLE_BLOCKS)]
    return [(0, _SAMPLE_EDGE_BYTES), *middle, (size - _SAMPLE_EDGE_BYTES, _SAMPLE_EDGE_BYTES)]


def _local_directory(model: str | os.PathLike[str], revision: str | None) -> Path | None:
    """``model`` as a local directory; None for a hub id; an error for anything else."""
    path = Path(model).expanduser()
    name = str(model)
    if path.is_dir():
        if revision is not None:
            raise CheckpointError(
                f"model {name!r} is a local directory, which has no revision {revision!r}; "
                f"remove the revision (M3INGEST_MODEL__REVISION or model.revision) or pass a hub id"
            )
        return path
    if path.exists():
        raise CheckpointError(
            f"model {name!r} is neither a directory nor a Hugging Face hub id like 'BAAI/bge-m3'; check {_MODEL_HELP}"
        )
    if _HUB_ID.match(name):
        return None
    raise CheckpointError(
        f"model directory {name!r} does not exist; download the model into it "
        f"(`hf download BAAI/bge-m3 --local-dir {name}`) or fix {_MODEL_HELP}"
    )


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    local = repo_id.split("/")[-1]
    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=_HUB_FILES,
                endpoint=endpoint,
                etag_timeout=_HUB_TIMEOUT_S,
            )
        )
    except Exception as exc:  # network, offline mode, auth, missing repo: all need the same advice
        raise CheckpointError(
            f"could not get {repo_id!r}{at} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"Download it where the hub is reachable, e.g. "
            f"`hf download {repo_id}{' --revision ' + revision if revision else ''} --local-dir ./{local}`, "
            f"then pass that directory: M3Encoder('./{local}'), `--model ./{local}` or "
            f"M3INGEST_MODEL__NAME=./{local}"
        ) from exc
