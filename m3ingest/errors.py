"""Exit codes of the command line and the errors the ingest job raises for the user to act on."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status of every ``m3ingest`` command (documented in docs/ingest.md)."""

    OK = 0
    #: The run finished, but some files could not be read or extracted (listed in the summary).
    FILES_FAILED = 1
    #: The configuration, an option or a setting recorded for the collection is not usable.
    CONFIG_ERROR = 2
    #: Another run holds the collection's lock.
    LOCKED = 3
    #: The vector store could not be reached or refused an operation.
    STORE_UNAVAILABLE = 4
    #: ``verify`` found drift between the records and the store and did not repair it.
    DRIFT = 5


class IngestError(RuntimeError):
    """A problem the user must fix before the job can run; the message says what to do."""


class SettingsMismatchError(IngestError):
    """The collection was built with another model, chunking or schema than this run asks for."""
