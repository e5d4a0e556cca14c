"""Which (rows, length) shapes forward passes take: a fixed grid, length buckets, or exact lengths.

On a GPU every new input shape costs time on first use (kernel choice, memory, graph capture),
so there batches are padded to a small, known grid of shapes: each input's length rounds up to a
bucket, a bucket's inputs fill batches of ``batch_tokens // bucket`` rows, and the last, partial
batch of a bucket rounds its row count up to a power of two. A CPU has no first-use cost but
gains from fewer, fuller batches of aligned lengths: there inputs are padded to their bucket
only and batches keep their row count. Either way an input is padded to its own bucket, whatever
its neighbours, so its vectors do not depend on the batch it lands in.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Protocol

from m3ingest.encoder.batching import plan_batches

#: Lengths up to this use fine steps; above it, each doubling of length has ``_STEPS_PER_OCTAVE``.
_FINE_LIMIT = 1024
_FINE_STEP = 64
_SMALLEST = (16, 32)  # queries
_STEPS_PER_OCTAVE = 8  # at most 12.5% padding above _FINE_LIMIT


def length_buckets(max_length: int) -> list[int]:
    """The padded lengths inputs of up to ``max_length`` tokens round up to, ascending.

    16, 32, then multiples of 64 up to 1024, then 8 steps per doubling (1152, 1280, ... 2048,
    2304, ... 4096, 4608, ... 8192, ...); the last bucket is ``max_length`` itself.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    buckets = [*_SMALLEST, *range(_FINE_STEP, _FINE_LIMIT + 1, _FINE_STEP)]
    octave = _FINE_LIMIT
    while buckets[-1] < max_length:
        step = octave // _STEPS_PER_OCTAVE
        buckets += range(octave + step, 2 * octave + 1, step)
        octave *= 2
    kept = [b for b in buckets if b < max_length]
    return [*kept, max_length]


def bucket_of(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``length`` tokens (``buckets`` ascending)."""
    i = bisect.bisect_left(buckets, length)
    if i == len(buckets):
        raise ValueError(f"an input of {length} tokens is longer than the largest bucket ({buckets[-1]})")
    return buckets[i]


def full_rows(bucket: int, batch_tokens: int) -> int:
    """Rows of a full batch in ``bucket``: as many as ``batch_tokens`` allows, at least one."""
    return max(1, batch_tokens // bucket)


def padded_rows(rows: int, full: int) -> int:
    """``rows`` rounded up to a power of two, but never above a full batch (``full`` rows)."""
    if rows >= full:
        return rows
    return min(full, 1 << (rows - 1).bit_length())


class BatchShapes(Protocol):
    """How inputs are grouped into batches, and the padded shape of each batch."""

    def plan(self, lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
        """Indices of ``lengths`` grouped into batches, the longest inputs first."""
        ...

    def shape(self, lengths: Sequence[int], batch_tokens: int) -> tuple[int, int]:
        """(rows, length) of the padded batch holding inputs of these lengths."""
        ...


class ExactShapes:
    """Batches of similar lengths padded to their longest input only (the CPU's choice)."""

    def plan(self, lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
        return plan_batches(lengths, batch_tokens)

    def shape(self, lengths: Sequence[int], batch_tokens: int) -> tuple[int, int]:
        return len(lengths), max(lengths)


class BucketShapes:
    """Batches of one length bucket each, padded to the bucket and (``pad_rows``) to a grid of
    row counts."""

    def __init__(self, max_length: int, pad_rows: bool = True) -> None:
        self.max_length = max_length
        self.pad_rows = pad_rows
        self.buckets = length_buckets(max_length)

    def plan(self, lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        by_bucket: dict[int, list[int]] = {}
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            by_bucket.setdefault(bucket_of(lengths[i], self.buckets), []).append(i)
        batches: list[list[int]] = []
        for bucket in sorted(by_bucket, reverse=True):  # longest first: an OOM shows at once
            members, rows = by_bucket[bucket], full_rows(bucket, batch_tokens)
            batches += [members[start : start + rows] for start in range(0, len(members), rows)]
        return batches

    def shape(self, lengths: Sequence[int], batch_tokens: int) -> tuple[int, int]:
        bucket = bucket_of(max(lengths), self.buckets)
        if not self.pad_rows:
            return len(lengths), bucket
        return padded_rows(len(lengths), full_rows(bucket, batch_tokens)), bucket

    def grid(self, batch_tokens: int, up_to: int | None = None) -> list[tuple[int, int]]:
        """Every (rows, length) shape ``plan`` and ``shape`` give inputs of up to ``up_to`` tokens."""
        top = bucket_of(min(up_to or self.max_length, self.max_length), self.buckets)
        shapes = []
        for bucket in self.buckets:
            if bucket > top:
                break
            full = full_rows(bucket, batch_tokens)
            shapes += [(1 << k, bucket) for k in range(full.bit_length()) if 1 << k < full]
            shapes.append((full, bucket))
        return shapes
