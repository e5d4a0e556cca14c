"""Exit codes of the command line, and the one error type every user-facing failure derives from."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status of every ``m3ingest`` command (the table in docs/operations.md)."""

    OK = 0
    #: The run finished, but some files could not be read or extracted (listed in the summary).
    FILES_FAILED = 1
    #: The configuration, an option, an argument or a setting recorded for the collection is not usable.
    CONFIG_ERROR = 2
    #: Another run holds the collection's lock.
    LOCKED = 3
    #: The vector store could not be reached or refused an operation.
    STORE_UNAVAILABLE = 4
    #: ``verify`` found drift between the records and the store and did not repair it.
    DRIFT = 5
    #: The records (or another local state file) are damaged or cannot be written; the message
    #: names the file and the command that repairs it.
    STATE_BROKEN = 6
    #: A bug: an error m3ingest did not expect. The traceback is printed; please report it.
    INTERNAL_ERROR = 70
    #: Stopped at once by a second SIGINT / SIGTERM (the first one stops between batches).
    INTERRUPTED = 130


class M3IngestError(Exception):
    """A failure the user can act on; the message says what to do and ``exit_code`` what it means."""

    exit_code: ExitCode = ExitCode.CONFIG_ERROR

    def __init__(self, message: str, *, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(M3IngestError, ValueError):
    """The configuration, an option or an argument cannot be used; the message names it (also a
    ``ValueError``: a value the caller gave is wrong)."""

    exit_code = ExitCode.CONFIG_ERROR


class SettingsMismatchError(ConfigError):
    """The collection was built with another model, chunking or schema than this run asks for."""


class CollectionNotFoundError(ConfigError):
    """A command that only reads was pointed at a collection (or store) that does not exist."""


class StateError(M3IngestError):
    """The records or another local state file are damaged or cannot be written."""

    exit_code = ExitCode.STATE_BROKEN
