"""The database clients' own log output, kept off the user's terminal unless asked for."""

from __future__ import annotations

import logging
import threading

#: Loggers of the clients and engines: pymilvus' tracebacks of calls it retries or that m3ingest
#: handles, Milvus Lite's embedded engine and the gRPC server it runs in this process.
CLIENT_LOGGERS = ("pymilvus", "milvus_lite", "grpc._server")

_lock = threading.Lock()
_quiet = False
#: Levels the clients had set before they were quietened, restored by ``quiet_client_logs(True)``.
_saved: dict[str, int] = {}


def quiet_client_logs(verbose: bool = False) -> None:
    """Silence the clients' own log records below CRITICAL, or (``verbose``) let them through as
    the clients set them up.

    The choice holds for clients imported later too: pymilvus sets its loggers up when imported,
    so the Milvus store applies it again then.
    """
    global _quiet
    with _lock:
        _quiet = not verbose
    apply()


def apply() -> None:
    """Apply the last ``quiet_client_logs`` choice to every client logger that exists now."""
    with _lock:
        if _quiet:  # the roots too, so that loggers created later inherit the level
            for name in CLIENT_LOGGERS:
                logging.getLogger(name)
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger) or not _is_client(name):
                continue
            if _quiet and logger.level != logging.CRITICAL:
                _saved[name] = logger.level
                logger.setLevel(logging.CRITICAL)
            elif not _quiet and name in _saved:
                logger.setLevel(_saved.pop(name))


def _is_client(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in CLIENT_LOGGERS)
