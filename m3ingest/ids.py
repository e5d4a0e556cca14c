"""Chunk ids: UUIDv5 strings from the collection, the source and the chunk's own content."""

from __future__ import annotations

import hashlib
import uuid

#: Fixed namespace of every m3ingest chunk id; changing it would re-encode every collection.
NAMESPACE = uuid.UUID("6b3c1f0e-9d2a-5e47-8f1b-3a0c7d9e4b21")


def text_hash(text: str) -> str:
    """SHA-256 hex digest of a chunk's text (its ``content_hash`` field)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id(collection: str, source_id: str, content_hash: str, occurrence: int = 0) -> str:
    """The id of a chunk; ``occurrence`` tells apart identical chunks within one source."""
    name = f"{collection}\x00{source_id}\x00{content_hash}"
    if occurrence:
        name += f"\x00{occurrence}"
    return str(uuid.uuid5(NAMESPACE, name))
