"""Token-budget batches over length-sorted inputs, and halving a batch on CUDA out-of-memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


class BatchTooLargeError(RuntimeError):
    """A batch at the smallest allowed size still does not fit in device memory."""


def plan_batches(lengths: Sequence[int], batch_tokens: int, min_fill: float = 0.95) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, longest first.

    Each batch holds inputs of similar length (none shorter than ``min_fill`` of its longest,
    so padding stays small), and its padded size (rows x longest row) stays within
    ``batch_tokens``; an input longer than the budget gets a batch of its own.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted descending, so the first row of a batch is its longest.
        longest = lengths[current[0]] if current else 0
        if current and (longest * (len(current) + 1) > batch_tokens or lengths[i] < min_fill * longest):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def run_with_backoff(
    items: list[T],
    run: Callable[[list[T]], list[R]],
    *,
    min_items: int = 1,
    describe: Callable[[list[T]], str] = lambda items: f"{len(items)} inputs",
    after_oom: Callable[[], None] | None = None,
) -> list[R]:
    """``run(items)``; on out-of-memory, run each half of ``items`` in turn, down to ``min_items``.

    Returns one result per item, in order. Below the floor it raises ``BatchTooLargeError``.
    """
    parts = split_on_oom(items, run, min_items=min_items, describe=describe, after_oom=after_oom)
    return [result for _, results in parts for result in results]


def split_on_oom(
    items: list[T],
    run: Callable[[list[T]], R],
    *,
    min_items: int = 1,
    describe: Callable[[list[T]], str] = lambda items: f"{len(items)} inputs",
    after_oom: Callable[[], None] | None = None,
) -> list[tuple[list[T], R]]:
    """``[(items, run(items))]``, or on out-of-memory the same for each half, recursively.

    Parts keep the order of ``items``. Below ``min_items`` it raises ``BatchTooLargeError``.
    """
    try:
        return [(items, run(items))]
    except torch.OutOfMemoryError as exc:
        if len(items) <= min_items:
            raise BatchTooLargeError(
                f"out of device memory on a batch of {describe(items)}, already at the smallest "
                f"batch; lower max_length or model.batch_tokens, or free memory on the device"
            ) from exc
    # Retried outside the except block so the failed attempt's tensors can be freed first.
    if after_oom is not None:
        after_oom()
    half = len(items) // 2
    return [
        part
        for side in (items[:half], items[half:])
        for part in split_on_oom(side, run, min_items=min_items, describe=describe, after_oom=after_oom)
    ]
