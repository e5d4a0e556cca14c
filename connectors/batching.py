"""Splitting writes into requests that stay below a byte budget."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def batches_by_bytes(
    items: Sequence[T], size_of: Callable[[T], int], limit: int
) -> Iterator[list[T]]:
    """Consecutive runs of ``items`` whose estimated sizes add up to at most ``limit`` bytes.

    An item larger than ``limit`` on its own travels alone (the caller rejects what no request fits).
    """
    batch: list[T] = []
    total = 0
    for item in items:
        size = size_of(item)
        if batch and total + size > limit:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += size
    if batch:
        yield batch
