"""m3ingest: documents into Milvus and Qdrant hybrid collections with BGE-M3, and back out."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# ``m3ingest.ingest`` names the library function, whose stages live in the package of the same
# name: importing the function here, after the package, makes the function what the name means.
from m3ingest.ingest import ingest, sync

__version__ = "0.1.0"

# Other public names and the module that defines each; imported on first use so that
# `m3ingest --help` and the config tools do not pay for torch.
_EXPORTS = {
    "M3Encoder": "m3ingest.encoder",
    "M3Output": "m3ingest.encoder",
    "Config": "m3ingest.config",
    "load_config": "m3ingest.config",
    "search": "m3ingest.api",
    "stats": "m3ingest.api",
    "drop": "m3ingest.api",
    "verify": "m3ingest.repair",
    "rebuild": "m3ingest.versions",
    "schedule": "m3ingest.scheduler",
    "M3Searcher": "m3ingest.retrievers",
    "M3Retriever": "m3ingest.retrievers",
}

__all__ = [
    "Config",
    "M3Encoder",
    "M3Output",
    "M3Retriever",
    "M3Searcher",
    "drop",
    "ingest",
    "load_config",
    "rebuild",
    "schedule",
    "search",
    "stats",
    "sync",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'm3ingest' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
