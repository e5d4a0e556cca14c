"""The plan stage: read, extract and chunk one new or changed file, and decide what its chunks need.

Both executors run ``prepare`` per file, in threads, processes or Ray tasks, so it takes only what
pickles cheaply: the file, its record, ``PlanSettings`` and a chunker. What it returns crosses back
packed (``pack`` / ``unpack``): the receiver already has the file and its record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from m3ingest.ids import chunk_id, text_hash
from m3ingest.records import SourceRecord
from m3ingest.sources.document import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from m3ingest.chunking import Chunk, Chunker
    from m3ingest.config import Config
    from m3ingest.sources import SourceFile


@dataclass(frozen=True)
class PlanSettings:
    """What ``prepare`` needs of the configuration: no store address, no credentials."""

    collection: str
    metadata: dict[str, Any]
    #: What one file may cost (``sources.max_file_bytes``, ``sources.max_text_chars``).
    limits: Limits = DEFAULT_LIMITS

    @classmethod
    def from_config(cls, config: Config, collection: str) -> PlanSettings:
        """The settings for files ingested into ``collection`` (a version's own name)."""
        s = config.sources
        limits = Limits(max_file_bytes=s.max_file_bytes, max_text_chars=s.max_text_chars)
        return cls(collection, dict(s.metadata), limits)


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


Prepared = Plan | Unchanged | Failed


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
    """Read, extract and chunk a new or changed file within ``settings.limits``, and classify its
    chunks; a file past a limit fails, naming the setting to raise."""
    from m3ingest.sources import ExtractionError, extract, read_source

    try:
        data, digest = read_source(f.path, settings.limits)
        if held is not None and held.content_hash == digest:
            return Unchanged(f)
        doc = extract(f.path, data, settings.limits)
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
        metadata = _metadata(base, c.headings)
        signature = text_hash(json.dumps([c.index, c.start, c.end, metadata], sort_keys=True, default=str))
        entries.append(Entry(chunk_id(settings.collection, f.source_id, h, seen[h]), c, h, metadata, signature))
    return entries


def _metadata(base: dict[str, Any], headings: tuple[str, ...]) -> dict[str, Any]:
    """A chunk's metadata: the settings' and the document's, and its heading path."""
    return {**base, "headings": list(headings)}


@dataclass
class PackedPlan:
    """A ``Plan`` without its file and record, in a form that pickles and unpickles fast: plain
    tuples, and every chunk's token ids in one array (lists of ints unpickle slowly)."""

    content_hash: str
    #: The metadata every chunk shares (the settings' and the document's).
    base: dict[str, Any]
    #: Per chunk: id, index, text, start, end, headings, content hash, signature.
    rows: list[tuple[str, int, str, int, int, tuple[str, ...], str, str]]
    token_ids: np.ndarray
    #: Where each chunk's token ids end in ``token_ids``.
    ends: np.ndarray

    def plan(self, f: SourceFile, held: SourceRecord | None) -> Plan:
        """The plan of ``f`` (whose record is ``held``), classified."""
        from m3ingest.chunking import Chunk

        ids = self.token_ids.tolist()
        entries = []
        start = 0
        for (cid, index, text, s, e, headings, h, signature), end in zip(self.rows, self.ends.tolist(), strict=True):
            chunk = Chunk(index, text, s, e, headings, ids[start:end])
            entries.append(Entry(cid, chunk, h, _metadata(self.base, headings), signature))
            start = end
        plan = Plan(f, self.content_hash, entries, dict(held.chunks) if held else {}, held is None)
        plan.classify()
        return plan


def pack(result: Prepared) -> PackedPlan | Unchanged | Failed:
    """``result`` ready to cross a process boundary."""
    if not isinstance(result, Plan):
        return result
    # Chunks differ only in their headings; those replace any the document's metadata had.
    base = {k: v for k, v in result.entries[0].metadata.items() if k != "headings"} if result.entries else {}
    lengths = [len(e.chunk.token_ids) for e in result.entries]
    token_ids = np.fromiter(
        (t for e in result.entries for t in e.chunk.token_ids), np.int32, sum(lengths)
    )
    rows = [
        (e.id, e.chunk.index, e.chunk.text, e.chunk.start, e.chunk.end, e.chunk.headings, e.content_hash, e.signature)
        for e in result.entries
    ]
    return PackedPlan(result.content_hash, base, rows, token_ids, np.cumsum(lengths, dtype=np.int64))


def unpack(packed: PackedPlan | Prepared, f: SourceFile, held: SourceRecord | None) -> Prepared:
    """The ``Prepared`` that ``pack`` packed (or was never packed), for ``f`` whose record is ``held``."""
    return packed.plan(f, held) if isinstance(packed, PackedPlan) else packed
