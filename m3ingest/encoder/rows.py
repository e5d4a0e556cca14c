"""A batch's outputs, copied to the host, cut into one sparse dict and one ColBERT array per input."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np


def sparse_rows(weights: np.ndarray, ids: np.ndarray) -> list[dict[int, float]]:
    """Per row of ``weights``/``ids`` (both (rows, length)): token id -> its largest weight > 0.

    Keys come in ascending id order.
    """
    rows, cols = np.nonzero(weights > 0)
    tokens, values = ids[rows, cols], weights[rows, cols]
    order = np.lexsort((tokens, rows))
    rows, tokens, values = rows[order], tokens[order], values[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (tokens[1:] != tokens[:-1])
    starts = np.flatnonzero(first)
    best = np.maximum.reduceat(values, starts) if len(starts) else values
    rows, tokens = rows[starts], tokens[starts]
    bounds = np.searchsorted(rows, np.arange(weights.shape[0] + 1)).tolist()
    token_list, value_list = tokens.tolist(), best.tolist()
    return [dict(zip(token_list[lo:hi], value_list[lo:hi], strict=True)) for lo, hi in pairwise(bounds)]


def colbert_rows(flat: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    """``flat`` (sum of (length - 1), dim) cut into one (length - 1, dim) array per input."""
    return np.split(flat, np.cumsum([n - 1 for n in lengths])[:-1])
