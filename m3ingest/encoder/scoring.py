"""Relevance scores between M3 outputs, as the paper defines them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def dense_score(q: np.ndarray, d: np.ndarray) -> float:
    """Dot product of two (normalised) dense vectors."""
    return float(np.dot(np.asarray(q, dtype=np.float32), np.asarray(d, dtype=np.float32)))


def lexical_score(q: Mapping[int, float], d: Mapping[int, float]) -> float:
    """Sum over the tokens both sides share of query weight x document weight."""
    if len(d) < len(q):
        q, d = d, q
    return float(sum(w * d[t] for t, w in q.items() if t in d))


def colbert_score(q: np.ndarray, d: np.ndarray) -> float:
    """Late interaction: the mean over query vectors of their best dot product with a document vector."""
    q = np.asarray(q, dtype=np.float32)
    d = np.asarray(d, dtype=np.float32)
    if q.shape[0] == 0 or d.shape[0] == 0:
        return 0.0
    return float((q @ d.T).max(axis=1).mean())


def m3_score(dense: float, lexical: float, colbert: float, weights: Sequence[float] = (0.4, 0.2, 0.4)) -> float:
    """The weighted sum ``w_dense*dense + w_lexical*lexical + w_colbert*colbert``."""
    w_dense, w_lexical, w_colbert = weights
    return float(w_dense * dense + w_lexical * lexical + w_colbert * colbert)
