"""Store reads written once for sync and async clients: a plan yields client calls, a driver makes them.

A plan is a generator: it yields each ``Call`` it needs and receives the client's answer, then
returns the result. ``run`` answers with a sync client, ``arun`` with an async one; the request
building and result parsing in the plan are the same for both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One client method call, and the operation and collection its errors name."""

    operation: str
    collection: str | None
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def on(self, client: Any) -> Any:
        """Make this call on ``client`` (a coroutine when the client is async)."""
        return getattr(client, self.method)(*self.args, **self.kwargs)


Plan = Generator[Call, Any, T]


def run(plan: Plan[T], execute: Callable[[Call], Any]) -> T:
    """Drive ``plan`` to its result, answering each call with ``execute(call)``."""
    try:
        call = next(plan)
        while True:
            call = plan.send(execute(call))
    except StopIteration as done:
        return done.value


async def arun(plan: Plan[T], execute: Callable[[Call], Awaitable[Any]]) -> T:
    """``run`` with an async ``execute``."""
    try:
        call = next(plan)
        while True:
            call = plan.send(await execute(call))
    except StopIteration as done:
        return done.value
