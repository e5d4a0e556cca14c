"""BGE-M3 encoding: dense, sparse and ColBERT vectors from one forward pass, and their scores."""

from m3ingest.encoder.batching import BatchTooLargeError
from m3ingest.encoder.checkpoint import CheckpointError
from m3ingest.encoder.core import M3Encoder, M3Output
from m3ingest.encoder.scoring import colbert_score, dense_score, lexical_score, m3_score

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
