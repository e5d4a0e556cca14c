"""Several devices sharing one list of batches: each takes the next batch when it is free."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_queue(
    items: Sequence[T],
    workers: Sequence[Callable[[T], Any]],
    on_done: Callable[[T], None] | None = None,
    in_flight: int = 0,
) -> list[Any]:
    """``[worker(item) for item in items]`` with each worker in its own thread pulling from a queue.

    With ``in_flight`` > 0, ``worker(item)`` only starts the work and returns a function that
    waits for its result; each worker then starts up to ``in_flight`` further items before it
    waits for an earlier one, so a device computes one batch while the host finishes the last.
    Results keep the order of ``items``. The first exception stops the other workers after their
    current item and is raised here.
    """
    pending: queue.SimpleQueue[tuple[int, T]] = queue.SimpleQueue()
    for pair in enumerate(items):
        pending.put(pair)
    out: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    done_lock = threading.Lock()

    def finish(index: int, item: T, result: Any) -> None:
        out[index] = result() if in_flight else result
        if on_done is not None:
            with done_lock:
                on_done(item)

    def loop(worker: Callable[[T], Any]) -> None:
        started: deque[tuple[int, T, Any]] = deque()
        while not errors:
            try:
                index, item = pending.get_nowait()
            except queue.Empty:
                break
            started.append((index, item, worker(item)))
            while len(started) > in_flight:
                finish(*started.popleft())
        while started and not errors:
            finish(*started.popleft())

    if len(workers) == 1:
        loop(workers[0])
        return out

    def guarded(worker: Callable[[T], Any]) -> None:
        try:
            loop(worker)
        except BaseException as exc:  # handed to the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out
