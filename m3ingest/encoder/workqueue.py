"""Several devices sharing one list of batches: each takes the next batch when it is free."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_queue(
    items: Sequence[T],
    workers: Sequence[Callable[[T], R]],
    on_done: Callable[[T], None] | None = None,
) -> list[R]:
    """``[worker(item) for item in items]`` with each worker in its own thread pulling from a queue.

    Results keep the order of ``items``. The first exception stops the other workers after their
    current item and is raised here.
    """
    if len(workers) == 1:
        results = []
        for item in items:
            results.append(workers[0](item))
            if on_done is not None:
                on_done(item)
        return results

    pending: queue.SimpleQueue[tuple[int, T]] = queue.SimpleQueue()
    for pair in enumerate(items):
        pending.put(pair)
    out: list[R | None] = [None] * len(items)
    errors: list[BaseException] = []
    done_lock = threading.Lock()

    def loop(worker: Callable[[T], R]) -> None:
        while not errors:
            try:
                index, item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                out[index] = worker(item)
            except BaseException as exc:  # handed to the caller's thread below
                errors.append(exc)
                return
            if on_done is not None:
                with done_lock:
                    on_done(item)

    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out  # type: ignore[return-value]
