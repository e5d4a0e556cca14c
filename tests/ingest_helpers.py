"""Helpers of the ingest tests: configurations on real embedded stores, documents of every type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3ingest.config import Config
from m3ingest.connectors import RetryPolicy, open_store
from m3ingest.context import CollectionContext

TINY = Path(__file__).parent / "fixtures" / "tiny-m3"
COLLECTION = "docs"


def store_uri(tmp: Path, backend: str) -> str:
    return str(tmp / ("m3.db" if backend == "milvus" else "qdrant"))


def make_config(tmp: Path, backend: str, **chunking: Any) -> Config:
    """A configuration on an embedded store under ``tmp`` with the tiny checkpoint on the CPU."""
    return Config.model_validate(
        {
            "store": {"backend": backend, "uri": store_uri(tmp, backend), "collection": COLLECTION},
            "model": {"name": str(TINY), "device": "cpu", "dtype": "float32", "batch_tokens": 256},
            "chunking": {"chunk_size": 24, "overlap": 4, **chunking},
            "sources": {"metadata": {"team": "docs"}},
        }
    )


def records_path(config: Config) -> Path:
    """Where the records of ``config``'s collection live (before any rebuild made it an alias)."""
    path = CollectionContext.from_config(config).records_path
    assert path is not None
    return path


def snapshot(config: Config) -> dict[str, dict[str, tuple]]:
    """source -> chunk id -> (text, chunk_index, start, end, content_hash, metadata) in the store."""
    with open_store(
        config.store.backend, config.store.uri, retry_policy=RetryPolicy(attempts=1)
    ) as store:
        name = config.store.collection
        if not store.has_collection(name):
            return {}
        out: dict[str, dict[str, tuple]] = {}
        for source, ids in store.ids_by_source(name).items():
            chunks = store.get(name, sorted(ids))
            out[source] = {
                c.id: (c.text, c.chunk_index, c.start, c.end, c.content_hash, c.metadata)
                for c in chunks
            }
        return out


def paragraphs(seed: int, n: int) -> str:
    words = "vector store chunk record source encoder sparse dense hybrid query".split()
    return "\n\n".join(
        " ".join(words[(seed + i + j) % len(words)] for j in range(12)) + f" {seed}-{i}."
        for i in range(n)
    )


def pdf_bytes(text: str) -> bytes:
    """A minimal valid one-page PDF showing ``text`` in Helvetica."""
    safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 12 Tf 72 720 Td ({safe}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def encrypted_pdf(path: Path, text: str) -> None:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(pdf_bytes(text))))
    writer.encrypt(user_password="secret", owner_password="owner")
    with path.open("wb") as f:
        writer.write(f)


def docx_file(path: Path, title: str, body: str) -> None:
    import docx

    d = docx.Document()
    d.add_heading(title, level=1)
    d.add_paragraph(body)
    d.save(str(path))
