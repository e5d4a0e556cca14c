"""Batch shapes: length buckets, the bounded (rows, length) grid, and outputs that do not depend
on padding or on an input's batch neighbours."""

from __future__ import annotations

import json
import random
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from m3ingest.encoder import M3Encoder
from m3ingest.encoder.shapes import BucketShapes, ExactShapes, length_buckets, padded_rows

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-m3"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return json.loads((FIXTURES / "tiny-m3-texts.json").read_text())


@pytest.fixture(scope="module")
def encoders() -> dict[str, M3Encoder]:
    return {s: M3Encoder(TINY, device="cpu", dtype="float32", shapes=s) for s in ("grid", "buckets", "exact")}


def test_length_buckets_are_fine_up_to_1024_then_eight_per_doubling():
    buckets = length_buckets(8192)
    assert buckets[:4] == [16, 32, 64, 128]
    assert [b for b in buckets if b <= 1024] == [16, 32, *range(64, 1025, 64)]
    assert [b for b in buckets if 1024 < b <= 2048] == list(range(1152, 2049, 128))
    assert [b for b in buckets if b > 4096] == list(range(4608, 8193, 512))
    assert len(buckets) == 42
    # Padding above 1024 tokens stays within one eighth of the length.
    assert all(b / a <= 1.125 for a, b in pairwise(buckets) if a >= 1024)
    assert length_buckets(100) == [16, 32, 64, 100]
    assert length_buckets(8) == [8]


def test_cpu_buckets_are_finer_and_keep_row_counts():
    shapes = BucketShapes.cpu(8192)
    assert shapes.buckets[:4] == [16, 32, 48, 64] and 1008 in shapes.buckets
    assert all(b / a <= 1.0625 for a, b in pairwise(shapes.buckets) if a >= 1024)
    assert shapes.shape([100, 90, 7], 16384) == (3, 112)


def test_partial_batches_round_rows_up_to_a_power_of_two_within_a_full_batch():
    assert [padded_rows(r, 28) for r in (1, 2, 3, 5, 9, 16, 17, 28)] == [1, 2, 4, 8, 16, 16, 28, 28]
    assert padded_rows(30, 28) == 30  # never fewer rows than inputs


@pytest.mark.parametrize("seed", range(3))
def test_grid_batches_hold_one_bucket_within_the_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 8192) for _ in range(2000)]
    shapes = BucketShapes(8192)
    batches = shapes.plan(lengths, 16384)

    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        rows, width = shapes.shape([lengths[i] for i in batch], 16384)
        assert {shapes.shape([lengths[i]], 16384)[1] for i in batch} == {width}
        assert rows >= len(batch) and (rows * width <= 16384 or rows == 1)
    # Longest bucket first, so an out-of-memory error shows on the first batch.
    assert max(lengths[i] for i in batches[0]) == max(lengths)


def test_10000_random_lengths_touch_a_bounded_set_of_shapes():
    rng = random.Random(11)
    budget = 16384
    grid_shapes = BucketShapes(8192)
    grid = set(grid_shapes.grid(budget))
    seen: set[tuple[int, int]] = set()
    exact: set[tuple[int, int]] = set()
    # Ten calls of 1,000 inputs, as an ingest run makes them: the union is what a process meets.
    for _ in range(10):
        lengths = [rng.randint(1, 8192) for _ in range(1000)]
        for batch in grid_shapes.plan(lengths, budget):
            seen.add(grid_shapes.shape([lengths[i] for i in batch], budget))
        for batch in ExactShapes().plan(lengths, budget):
            exact.add(ExactShapes().shape([lengths[i] for i in batch], budget))

    assert seen <= grid
    # The designed bound: 42 buckets, each with at most log2(16384 / 16) + 1 = 11 row counts
    # (the powers of two below a full batch, and the full batch); the grid itself has 211.
    assert len(grid) <= 42 * 11 and len(grid) == 211
    assert len(exact) > 5 * len(seen)  # what exact lengths would have compiled and captured


def test_grid_up_to_a_length_stops_at_its_bucket():
    grid = BucketShapes(8192).grid(16384, up_to=500)
    assert max(w for _, w in grid) == 512 and (32, 512) in grid and (1, 16) in grid


@pytest.mark.parametrize("max_length", [8192, 64])
def test_padding_to_buckets_gives_the_outputs_of_exact_lengths(encoders, texts, max_length):
    exact = encoders["exact"].encode(texts, colbert=True, max_length=max_length)
    for name in ("grid", "buckets"):
        padded = encoders[name].encode(texts, colbert=True, max_length=max_length)
        np.testing.assert_allclose(padded.dense, exact.dense, atol=1e-5, rtol=0)
        assert [sorted(s) for s in padded.sparse] == [sorted(s) for s in exact.sparse]
        for a, b in zip(padded.sparse, exact.sparse, strict=True):
            assert max((abs(a[k] - b[k]) for k in a), default=0.0) <= 1e-5
        for a, b in zip(padded.colbert, exact.colbert, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shapes", ["grid", "buckets", "exact"])
def test_an_input_gets_the_same_vectors_whatever_its_batch(encoders, texts, shapes):
    enc = encoders[shapes]
    target = texts[1]
    rng = random.Random(3)
    others = [" ".join(rng.choice(texts[9].split()) for _ in range(rng.randint(5, 60))) for _ in range(40)]
    alone = enc.encode([target], colbert=True, max_length=512)
    crowded = enc.encode([*others[:20], target, *others[20:]], colbert=True, max_length=512)
    small = enc.encode([*others[:3], target], colbert=True, max_length=512, batch_tokens=256)

    for out, i in ((crowded, 20), (small, 3)):
        np.testing.assert_allclose(out.dense[i], alone.dense[0], atol=1e-6, rtol=0)
        assert sorted(out.sparse[i]) == sorted(alone.sparse[0])
        assert max(abs(out.sparse[i][k] - w) for k, w in alone.sparse[0].items()) <= 1e-6
        np.testing.assert_allclose(out.colbert[i], alone.colbert[0], atol=1e-6, rtol=0)


def test_unknown_shapes_setting_is_refused():
    with pytest.raises(ValueError, match="unknown shapes"):
        M3Encoder(TINY, device="cpu", shapes="round")
