"""BGE-M3 encoding: dense, sparse and ColBERT vectors from one forward pass, and their scores.

Names are imported on first use, so that ``m3ingest.encoder.checkpoint`` (no torch) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m3ingest.encoder.batching import BatchTooLargeError
    from m3ingest.encoder.checkpoint import CheckpointError
    from m3ingest.encoder.core import M3Encoder, M3Output
    from m3ingest.encoder.scoring import colbert_score, dense_score, lexical_score, m3_score

_EXPORTS = {
    "BatchTooLargeError": "m3ingest.encoder.batching",
    "CheckpointError": "m3ingest.encoder.checkpoint",
    "M3Encoder": "m3ingest.encoder.core",
    "M3Output": "m3ingest.encoder.core",
    "colbert_score": "m3ingest.encoder.scoring",
    "dense_score": "m3ingest.encoder.scoring",
    "lexical_score": "m3ingest.encoder.scoring",
    "m3_score": "m3ingest.encoder.scoring",
}

__all__ = [
    "BatchTooLargeError",
    "CheckpointError",
    "M3Encoder",
    "M3Output",
    "colbert_score",
    "dense_score",
    "lexical_score",
    "m3_score",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'm3ingest.encoder' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
