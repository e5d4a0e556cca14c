"""Extractors for HTML, PDF and DOCX, each ``(path, data) -> Document``, through well-kept libraries."""

from __future__ import annotations

import io
import re
from pathlib import Path

from .document import Document, ExtractionError, sections_from_starts

_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_HEADING_LEVEL = re.compile(r"h([1-6])$")


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _build(blocks: list[tuple[int | None, str]]) -> tuple[str, list[tuple[int, tuple[str, ...]]], str | None]:
    """Join (heading level or None, text) blocks with blank lines; returns text, section starts, first h1.

    Level 0 (a document title) is above level 1.
    """
    parts: list[str] = []
    starts: list[tuple[int, tuple[str, ...]]] = []
    stack: list[tuple[int, str]] = []
    title: str | None = None
    pos = 0
    for level, block in blocks:
        if not block:
            continue
        if level is not None:
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, block))
            starts.append((pos, tuple(t for _, t in stack)))
            if level <= 1 and title is None:
                title = block
        parts.append(block)
        pos += len(block) + 2
    return "\n\n".join(parts), starts, title


def extract_html(path: Path, data: bytes) -> Document:
    """The main text of a page (trafilatura), headings h1-h6 as sections; scripts, styles, menus dropped.

    Pages too small for trafilatura's main-content detection fall back to the visible text of <body>.
    """
    import trafilatura
    from lxml import etree

    # fast: no second-opinion extractors; metadata: only the title is used, found more cheaply below.
    xml = trafilatura.extract(
        data, output_format="xml", include_tables=True, include_comments=False, with_metadata=False, fast=True
    )
    if xml:
        root = etree.fromstring(xml.encode("utf-8"))
        blocks: list[tuple[int | None, str]] = []
        for el in root.iterfind("main/*"):
            level = _HEADING_LEVEL.match(el.get("rend", "")) if el.tag == "head" else None
            if el.tag == "list":
                block = "\n".join(_clean("".join(item.itertext())) for item in el.iter("item"))
            elif el.tag == "table":
                block = "\n".join(" | ".join(_clean("".join(c.itertext())) for c in row.iter("cell")) for row in el.iter("row"))
            else:
                block = _clean("".join(el.itertext()))
            if el.tag == "head":
                # Sphinx and similar generators end headings with a "¶" permalink.
                blocks.append((int(level.group(1)) if level else 2, block.rstrip("¶ ")))
            else:
                blocks.append((None, block))
        text, starts, h1 = _build(blocks)
        if text.strip():
            title = h1 or _html_title(data)
            return Document(text, sections_from_starts(text, starts), {"title": title} if title else {})
    return _html_body_text(path, data)


def _html_title(data: bytes) -> str | None:
    import lxml.html
    from lxml import etree

    try:
        title = lxml.html.document_fromstring(data).findtext(".//title")
    except (etree.ParserError, ValueError):
        return None
    return _clean(title) if title and title.strip() else None


def _html_body_text(path: Path, data: bytes) -> Document:
    import lxml.html
    from lxml import etree

    try:
        tree = lxml.html.document_fromstring(data)
    except (etree.ParserError, ValueError) as e:
        raise ExtractionError(path, f"not parseable as HTML: {e}") from None
    for el in tree.xpath("//script|//style|//noscript|//template|//head"):
        el.drop_tree()
    title = tree.findtext(".//title")
    body = tree.find("body")
    raw = body.text_content() if body is not None else tree.text_content()
    lines = [line for line in (_clean(x) for x in raw.split("\n")) if line]
    text = "\n".join(lines)
    metadata = {"title": _clean(title)} if title and title.strip() else {}
    return Document(text, sections_from_starts(text, []), metadata)


def extract_pdf(path: Path, data: bytes) -> Document:
    """Text of every page (pypdf), pages separated by blank lines; an empty user password is tried."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, DependencyError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")
            except DependencyError as e:
                raise ExtractionError(path, f"encrypted PDF that needs an extra package to open: {e}") from None
            if not unlocked:
                raise ExtractionError(path, "encrypted PDF (needs a password)")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        info = reader.metadata
        title = info.title if info else None
    except ExtractionError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as e:
        raise ExtractionError(path, f"corrupt PDF: {e or type(e).__name__}") from None
    text = "\n\n".join(p for p in pages if p)
    if not text:
        raise ExtractionError(path, f"no extractable text in {len(pages)} page(s) (a scanned PDF needs OCR first)")
    metadata: dict[str, object] = {"pages": len(pages)}
    if isinstance(title, str) and title.strip():
        metadata["title"] = title.strip()
    return Document(text, sections_from_starts(text, []), metadata)


def extract_docx(path: Path, data: bytes) -> Document:
    """Paragraphs and tables in body order (python-docx); ``Heading N`` and ``Title`` styles start sections."""
    import zipfile

    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ExtractionError(path, f"corrupt DOCX: {e}") from None
    blocks: list[tuple[int | None, str]] = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            rows = (" | ".join(_clean(cell.text) for cell in row.cells) for row in item.rows)
            blocks.append((None, "\n".join(rows)))
            continue
        style = item.style.name if item.style is not None else ""
        level = None
        if style == "Title":
            level = 0
        elif style.startswith("Heading "):
            suffix = style.removeprefix("Heading ")
            level = int(suffix) if suffix.isdigit() else None
        blocks.append((level, _clean(item.text)))
    text, starts, h1 = _build(blocks)
    title = document.core_properties.title or h1
    return Document(text, sections_from_starts(text, starts), {"title": title} if title else {})
