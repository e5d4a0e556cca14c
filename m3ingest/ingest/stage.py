"""A stage thread: applies what is put to it, in order, from a bounded queue."""

from __future__ import annotations

import abc
import queue
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Stage(threading.Thread, Generic[T], metaclass=abc.ABCMeta):
    """Applies the items put to it one after another (``apply``), holding at most ``size``
    waiting. Its first error stops it: later items are dropped and the error is raised to whoever
    puts the next one or waits for the end, so the run stops where it failed."""

    def __init__(self, name: str, size: int) -> None:
        super().__init__(name=name, daemon=True)
        self.error: BaseException | None = None
        self._items: queue.Queue[T | None] = queue.Queue(maxsize=size)

    @abc.abstractmethod
    def apply(self, item: T) -> None:
        """Do the work of one item."""

    def skips(self) -> bool:
        """Whether to drop the items still queued instead of applying them (default: never)."""
        return False

    def put(self, item: T) -> None:
        """Queue ``item``, waiting while the queue is full; raise the stage's error if it failed."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._items.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self, raise_error: bool = True) -> None:
        """Wait until every item put is applied; re-raise the stage's error."""
        if self.is_alive():
            self._items.put(None)
            self.join()
        if raise_error and self.error is not None:
            raise self.error

    def run(self) -> None:
        while True:
            item = self._items.get()
            if item is None:
                return
            if self.error is not None or self.skips():
                continue
            try:
                self.apply(item)
            except BaseException as e:  # handed to the putting thread, which re-raises it
                self.error = e
