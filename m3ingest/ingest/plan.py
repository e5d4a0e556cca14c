"""The plan stage: read, extract and chunk one new or changed file, and decide what its chunks need.

Both executors run ``prepare`` per file, in threads, processes or Ray tasks, so it takes only what
pickles cheaply: the file, its record, ``PlanSettings`` and a chunker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from m3ingest.ids import chunk_id, text_hash
from m3ingest.records import SourceRecord

if TYPE_CHECKING:
    from m3ingest.chunking import Chunk, Chunker
    from m3ingest.config import Config
    from m3ingest.sources import SourceFile


@dataclass(frozen=True)
class PlanSettings:
    """What ``prepare`` needs of the configuration: no store address, no credentials."""

    collection: str
    metadata: dict[str, Any]

    @classmethod
    def from_config(cls, config: Config, collection: str) -> PlanSettings:
        """The settings for files ingested into ``collection`` (a version's own name)."""
        return cls(collection, dict(config.sources.metadata))


@dataclass
class Entry:
    """One chunk of a prepared file, with its id and payload signature."""

    id: str
    chunk: Chunk
    content_hash: str
    metadata: dict[str, Any]
    signature: str


@dataclass
class Plan:
    """A new or changed file, extracted and chunked, and what must happen to its chunks."""

    file: SourceFile
    content_hash: str
    entries: list[Entry]
    held: dict[str, str]
    is_new: bool
    #: Chunks whose text the store does not hold: encoded.
    encode: list[Entry] = field(default_factory=list)
    #: Chunks held with another payload (moved, new metadata): rewritten with their stored vectors.
    rewrite: list[Entry] = field(default_factory=list)
    #: Held chunk ids the file no longer has: deleted once the new chunks are written.
    stale: list[str] = field(default_factory=list)

    def classify(self) -> None:
        """Split the chunks into ones to encode, ones to rewrite, and held ids to delete."""
        ids = {e.id for e in self.entries}
        self.encode = [e for e in self.entries if e.id not in self.held]
        self.rewrite = [e for e in self.entries if e.id in self.held and self.held[e.id] != e.signature]
        self.stale = [cid for cid in self.held if cid not in ids]

    @property
    def tokens(self) -> int:
        """Tokens to encode."""
        return sum(len(e.chunk.token_ids) for e in self.encode)

    def record(self) -> SourceRecord:
        f = self.file
        chunks = {e.id: e.signature for e in self.entries}
        return SourceRecord(f.source_id, f.size, f.mtime_ns, self.content_hash, chunks)


@dataclass
class Unchanged:
    """A file whose bytes are unchanged although its size or mtime moved."""

    file: SourceFile


@dataclass
class Failed:
    """A file that could not be read or extracted; what the store holds for it is kept."""

    path: str
    reason: str
    source_id: str


Prepared = Union[Plan, Unchanged, Failed]


def unchanged(held: SourceRecord | None, f: SourceFile) -> bool:
    """Whether the records show ``f`` with the same size and mtime: skipped before reading."""
    return (
        held is not None
        and bool(held.content_hash)
        and (held.size, held.mtime_ns) == (f.size, f.mtime_ns)
    )


def prepare(
    f: SourceFile, held: SourceRecord | None, settings: PlanSettings, chunker: Chunker
) -> Prepared:
    """Read, extract and chunk a new or changed file, and classify its chunks."""
    from m3ingest.sources import ExtractionError, content_hash, extract, read_bytes

    try:
        data = read_bytes(f.path)
        digest = content_hash(data)
        if held is not None and held.content_hash == digest:
            return Unchanged(f)
        doc = extract(f.path, data)
        del data
        chunks = chunker.chunk(doc)
    except ExtractionError as e:
        return Failed(str(f.path), str(getattr(e, "reason", e)), f.source_id)
    plan = Plan(f, digest, _entries(chunks, doc.metadata, f, settings), dict(held.chunks) if held else {}, held is None)
    plan.classify()
    return plan


def _entries(
    chunks: list[Chunk], doc_metadata: dict[str, Any], f: SourceFile, settings: PlanSettings
) -> list[Entry]:
    base = {**settings.metadata, **doc_metadata}
    seen: dict[str, int] = {}
    entries = []
    for c in chunks:
        h = text_hash(c.text)
        seen[h] = seen.get(h, -1) + 1
        metadata = {**base, "headings": list(c.headings)}
        signature = text_hash(json.dumps([c.index, c.start, c.end, metadata], sort_keys=True, default=str))
        entries.append(Entry(chunk_id(settings.collection, f.source_id, h, seen[h]), c, h, metadata, signature))
    return entries
