"""Which (rows, length) shapes forward passes take: a fixed grid, length buckets, or exact lengths.

On a GPU every new input shape costs time on first use (kernel choice, memory, graph capture),
so there batches are padded to a small, known grid of shapes: each input's length rounds up to a
bucket, a bucket's inputs fill batches of ``batch_tokens // bucket`` rows, and the last, partial
batch of a bucket rounds its row count up to a power of two. A CPU has no first-use cost, so
there the buckets are finer (padding is its only cost) and batches keep their row count. Either
way an input is padded to its own bucket, whatever its neighbours, so its vectors do not depend
on the batch it lands in: the kernels see the same row whichever batch holds it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Protocol

from m3ingest.encoder.batching import plan_batches

#: Lengths up to this rise in fixed steps; above it, each doubling of length has a fixed number.
_FINE_LIMIT = 1024
_QUERY_BUCKETS = (16, 32)
#: The GPU grid: few shapes (each costs a first use), at most 12.5% padding above 1024 tokens.
GRID_STEP, GRID_PER_OCTAVE = 64, 8
#: The CPU's buckets: padding is the only cost there, so finer (at most 6.25% above 1024).
CPU_STEP, CPU_PER_OCTAVE = 16, 16


def length_buckets(max_length: int, step: int = GRID_STEP, per_octave: int = GRID_PER_OCTAVE) -> list[int]:
    """The padded lengths inputs of up to ``max_length`` tokens round up to, ascending.

    16 and 32 (those below ``step``), then multiples of ``step`` up to 1024, then ``per_octave``
    steps per doubling (by default 1152, 1280, ... 2048, 2304, ... 4096, 4608, ... 8192); the
    last bucket is ``max_length`` itself.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    buckets = [b for b in _QUERY_BUCKETS if b < step] + list(range(step, _FINE_LIMIT + 1, step))
    octave = _FINE_LIMIT
    while buckets[-1] < max_length:
        octave_step = octave // per_octave
        buckets += range(octave + octave_step, 2 * octave + 1, octave_step)
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
    row counts. The defaults are the GPU grid; ``cpu()`` gives the CPU's finer buckets."""

    def __init__(
        self,
        max_length: int,
        pad_rows: bool = True,
        step: int = GRID_STEP,
        per_octave: int = GRID_PER_OCTAVE,
    ) -> None:
        self.max_length = max_length
        self.pad_rows = pad_rows
        self.buckets = length_buckets(max_length, step, per_octave)

    @classmethod
    def cpu(cls, max_length: int) -> BucketShapes:
        """Fine length buckets and exact row counts: no first-use cost to avoid, little padding."""
        return cls(max_length, pad_rows=False, step=CPU_STEP, per_octave=CPU_PER_OCTAVE)

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
