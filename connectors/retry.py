"""Retry of transient store errors with exponential backoff, then one ``StoreError`` naming the call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .base import StoreError

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


def call(
    fn: Callable[[], T],
    *,
    backend: str,
    operation: str,
    collection: str | None,
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy,
) -> T:
    """Run ``fn``; retry it while it fails transiently, then raise ``StoreError`` naming the call.

    A ``StoreError`` raised by ``fn`` itself passes through unchanged.
    """
    retrying = Retrying(
        stop=stop_after_attempt(max(1, policy.attempts)),
        wait=wait_exponential_jitter(initial=policy.initial_wait, max=policy.max_wait),
        retry=retry_if_exception(lambda e: not isinstance(e, StoreError) and is_transient(e)),
        reraise=True,
    )
    try:
        return retrying(fn)
    except StoreError:
        raise
    except Exception as e:
        attempts = retrying.statistics.get("attempt_number", 1)
        where = f" on collection '{collection}'" if collection else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        raise StoreError(f"{backend}: {operation}{where} failed{tries}: {e}") from e
