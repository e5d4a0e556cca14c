"""Retry of transient store errors with exponential backoff, then one ``StoreError`` naming the call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .base import StoreError

if TYPE_CHECKING:  # tenacity is imported by the first call, not with the package
    from tenacity import AsyncRetrying, Retrying

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried."""

    attempts: int = 5
    initial_wait: float = 0.5
    max_wait: float = 8.0


def is_transient_builtin(exc: BaseException) -> bool:
    """Connection resets, refusals and timeouts, whichever client raised them."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    code = getattr(exc, "code", None)
    if callable(code):  # a grpc.RpcError
        try:
            name = getattr(code(), "name", "")
        except Exception:
            return False
        return name in {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
    return False


def _retry_args(is_transient: Callable[[BaseException], bool], policy: RetryPolicy) -> dict[str, Any]:
    from tenacity import retry_if_exception, stop_after_attempt, wait_exponential_jitter

    return {
        "stop": stop_after_attempt(max(1, policy.attempts)),
        "wait": wait_exponential_jitter(initial=policy.initial_wait, max=policy.max_wait),
        "retry": retry_if_exception(lambda e: not isinstance(e, StoreError) and is_transient(e)),
        "reraise": True,
    }


def _store_error(
    e: Exception, retrying: Retrying | AsyncRetrying, store: str, operation: str, collection: str | None
) -> StoreError:
    attempts = retrying.statistics.get("attempt_number", 1)
    where = f" on collection '{collection}'" if collection else ""
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return StoreError(f"{store}: {operation}{where} failed{tries}: {e}")


def call(
    fn: Callable[[], T],
    *,
    store: str,
    operation: str,
    collection: str | None,
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy,
) -> T:
    """Run ``fn``; retry it while it fails transiently, then raise ``StoreError`` naming the call.

    ``store`` is how the message names the store (``"milvus at http://host:19530"``). A
    ``StoreError`` raised by ``fn`` itself passes through unchanged.
    """
    from tenacity import Retrying

    retrying = Retrying(**_retry_args(is_transient, policy))
    try:
        return retrying(fn)
    except StoreError:
        raise
    except Exception as e:
        raise _store_error(e, retrying, store, operation, collection) from e


async def acall(
    fn: Callable[[], Awaitable[T]],
    *,
    store: str,
    operation: str,
    collection: str | None,
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy,
) -> T:
    """``call`` for coroutines: ``fn()`` is awaited, and the waits between tries do not block the loop."""
    from tenacity import AsyncRetrying

    retrying = AsyncRetrying(**_retry_args(is_transient, policy))
    try:
        return await retrying(fn)
    except StoreError:
        raise
    except Exception as e:
        raise _store_error(e, retrying, store, operation, collection) from e
