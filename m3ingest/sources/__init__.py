"""Sources: walk ingest folders and turn each file into a ``Document`` of plain text with sections."""

from .document import Document, ExtractionError, Limits, Section
from .extractors import (
    Extractor,
    content_hash,
    extract,
    read_bytes,
    read_source,
    register_extractor,
    registered_extractors,
    supported_suffixes,
)
from .walk import DEFAULT_EXCLUDED_DIRS, SourceFailure, SourceFile, glob_match, walk

__all__ = [
    "DEFAULT_EXCLUDED_DIRS",
    "Document",
    "ExtractionError",
    "Extractor",
    "Limits",
    "Section",
    "SourceFailure",
    "SourceFile",
    "content_hash",
    "extract",
    "glob_match",
    "read_bytes",
    "read_source",
    "register_extractor",
    "registered_extractors",
    "supported_suffixes",
    "walk",
]
