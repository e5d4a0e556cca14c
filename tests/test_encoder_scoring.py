"""The M3 relevance scores against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from m3ingest.encoder import colbert_score, dense_score, lexical_score, m3_score


def test_dense_score_is_the_dot_product():
    q = np.array([0.6, 0.8, 0.0], np.float32)
    d = np.array([0.0, 0.6, 0.8], np.float32)
    assert dense_score(q, d) == pytest.approx(0.48)


def test_lexical_score_sums_shared_token_products():
    q = {10: 0.5, 11: 0.2, 12: 0.9}
    d = {11: 0.4, 12: 0.1, 99: 3.0}
    assert lexical_score(q, d) == pytest.approx(0.2 * 0.4 + 0.9 * 0.1)
    assert lexical_score(d, q) == pytest.approx(lexical_score(q, d))
    assert lexical_score(q, {}) == 0.0


def test_colbert_score_is_mean_of_best_matches():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    d = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]], np.float32)
    # q0 best: 1.0 (d1); q1 best: 0.8 (d0) -> mean 0.9
    assert colbert_score(q, d) == pytest.approx(0.9)
    assert colbert_score(q[:0], d) == 0.0


def test_m3_score_is_the_weighted_sum():
    assert m3_score(0.5, 0.25, 1.0) == pytest.approx(0.4 * 0.5 + 0.2 * 0.25 + 0.4 * 1.0)
    assert m3_score(0.5, 0.25, 1.0, weights=(1, 0, 0)) == pytest.approx(0.5)
    assert math.isclose(m3_score(0, 0, 0), 0.0)
