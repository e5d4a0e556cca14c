"""Secrets never leave the process: masking for log records, messages, reports and exceptions.

Three kinds of text are masked wherever output is produced:
- the values of known secrets: the store token, password and API key of every configuration
  loaded (``register_config``), and environment variables whose name says they are secret
  (``*TOKEN*``, ``*PASSWORD*``, ``*SECRET*``, ``*API_KEY*``, ``*APIKEY*``), which covers
  ``${VAR}`` references in configuration files;
- credentials inside URIs: ``https://user:pass@host`` becomes ``https://***@host``;
- ``token=...``, ``password: ...``, ``api_key=...`` style assignments and ``Bearer`` headers.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import SecretStr

MASK = "***"

#: Secrets shorter than this are not masked by value: masking "1" everywhere helps nobody.
_MIN_LENGTH = 4
_SECRET_ENV = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|CREDENTIAL", re.IGNORECASE)
_URI_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/@'\"]+)@")
_ASSIGNMENT = re.compile(
    r"(?P<key>\b(?:token|password|passwd|secret|api[_-]?key|apikey|authorization)\b['\"]?\s*[:=]\s*"
    r"['\"]?)(?P<value>(?:bearer\s+)?[^\s'\",;)}\]]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\bbearer\s+)(?P<value>[A-Za-z0-9._~+/=-]{4,})", re.IGNORECASE)

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | SecretStr | None) -> None:
    """Mask this value from now on, wherever it appears."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value and len(value) >= _MIN_LENGTH:
        with _lock:
            _secrets.add(value)


def register_config(config: Any) -> None:
    """Mask the store credentials of a ``Config`` (token, password, API key)."""
    store = getattr(config, "store", None)
    for name in ("token", "password", "api_key"):
        register_secret(getattr(store, name, None))


def _env_secrets(env: Mapping[str, str]) -> Iterable[str]:
    return (v for k, v in env.items() if _SECRET_ENV.search(k) and len(v) >= _MIN_LENGTH)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` with every known secret, URI credential and secret assignment masked."""
    if not text:
        return text
    with _lock:
        values = set(_secrets)
    values.update(_env_secrets(os.environ if env is None else env))
    # Longest first, so a secret containing another is masked whole.
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    text = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _ASSIGNMENT.sub(lambda m: m["key"] + MASK, text)
    return _BEARER.sub(lambda m: m["key"] + MASK, text)


def redact_data(data: Any) -> Any:
    """A JSON-like structure (report, summary) with every string in it redacted."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, Mapping):
        return {k: redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return data


def scrub_exception(exc: BaseException) -> BaseException:
    """Redact an exception in place (its args, string attributes and its causes); returns it.

    Client libraries put URIs and sometimes headers into their messages; a scrubbed exception
    can be re-raised, logged or printed safely.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
        for name, value in list(vars(current).items()):
            if isinstance(value, str):
                with contextlib.suppress(AttributeError):
                    setattr(current, name, redact(value))
        current = current.__cause__ or current.__context__
    return exc


def _redact_record(record: logging.LogRecord) -> None:
    record.msg = redact(record.getMessage())
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


F = TypeVar("F", bound=Callable[..., Any])


def scrubbed(func: F) -> F:
    """Decorate a library function so that the exceptions it raises carry no secret."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as e:
            scrub_exception(e)  # in place: the same exception, re-raised with its traceback
            raise

    return wrapper  # type: ignore[return-value]


class SecretFilter(logging.Filter):
    """A handler filter that masks secrets in the message, its arguments and any traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def install_record_redaction() -> None:
    """Mask every log record when it is created, whichever logger and handler it goes to.

    Client libraries install their own handlers (pymilvus logs RPC errors to stderr without
    propagating), so a filter on our handlers alone is not enough. Records are only created
    for enabled levels, so the cost is paid only for lines that are written.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_m3ingest", False):
        return

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        _redact_record(record)
        return record

    make._m3ingest = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make)
