"""One async database client per event loop: async clients are bound to the loop that opened them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

C = TypeVar("C")


class PerLoop(Generic[C]):
    """Opens a client the first time a loop asks for one and hands that loop the same client after.

    Clients of loops that have closed are dropped (they can no longer be closed cleanly).
    """

    def __init__(
        self, open: Callable[[], Coroutine[Any, Any, C]], close: Callable[[C], Coroutine[Any, Any, object]]
    ) -> None:
        self._open = open
        self._close = close
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, asyncio.Task[C]] = {}

    async def get(self) -> C:
        """The running loop's client; concurrent first callers share one opening."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                del self._clients[old]
            task = self._clients.get(loop)
            if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
                task = self._clients[loop] = loop.create_task(self._open())
        # shield: a caller cancelled while the client opens must not cancel the opening for the others
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        """Close the running loop's client, once it has opened."""
        with self._lock:
            task = self._clients.pop(asyncio.get_running_loop(), None)
        if task is None:
            return
        try:
            client = await task
        except Exception:  # it never opened: nothing to close
            return
        await self._close(client)

    def close(self) -> None:
        """Close every client whose loop is still open (scheduled on a loop that is running)."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for loop, task in clients.items():
            if loop.is_closed() or not task.done() or task.cancelled() or task.exception() is not None:
                continue
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(self._close(task.result()), loop)
            else:
                loop.run_until_complete(self._close(task.result()))
