"""Store reads written once for sync and async clients: a plan yields client calls, a driver makes them.

A plan is a generator: it yields each ``Call`` it needs and receives the client's answer (or, where
the call failed, its exception, raised at the ``yield``), then returns the result. ``run`` answers
with a sync client, ``arun`` with an async one; the request building, result parsing and recovery
in the plan are the same for both.
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
    """Drive ``plan`` to its result, answering each call with ``execute(call)``; an exception of
    ``execute`` is thrown into the plan, which may handle it."""
    try:
        call = next(plan)
        while True:
            try:
                answer = execute(call)
            except Exception as e:
                call = plan.throw(e)
            else:
                call = plan.send(answer)
    except StopIteration as done:
        return done.value


async def arun(plan: Plan[T], execute: Callable[[Call], Awaitable[Any]]) -> T:
    """``run`` with an async ``execute``."""
    try:
        call = next(plan)
        while True:
            try:
                answer = await execute(call)
            except Exception as e:
                call = plan.throw(e)
            else:
                call = plan.send(answer)
    except StopIteration as done:
        return done.value
