"""Extractors for HTML, PDF and DOCX, each ``(path, data) -> Document``, through well-kept libraries."""

from __future__ import annotations

import io
import logging
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from .document import Document, ExtractionError, current_limits, sections_from_starts, too_big, too_much_text
from .text import BinaryContent, decode_text

log = logging.getLogger(__name__)

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

    Pages too small for trafilatura's main-content detection fall back to the visible text of
    <body>. Pages that libxml2 (under trafilatura and lxml) would cut short, nested more than 256
    elements deep or with a text run over 10 MB, are read whole by Python's own HTML parser
    instead: their visible text, without main-content detection.
    """
    import trafilatura
    from lxml import etree

    tree, cut, error = _parse_html(data)
    if cut:
        log.warning("%s: %s; reading its visible text with Python's HTML parser instead", path, cut)
        return _visible_text(data)
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
                block = "\n".join(
                    " | ".join(_clean("".join(c.itertext())) for c in row.iter("cell")) for row in el.iter("row")
                )
            else:
                block = _clean("".join(el.itertext()))
            if el.tag == "head":
                # Sphinx and similar generators end headings with a "¶" permalink.
                blocks.append((int(level.group(1)) if level else 2, block.rstrip("¶ ")))
            else:
                blocks.append((None, block))
        text, starts, h1 = _build(blocks)
        if text.strip():
            title = h1 or _html_title(tree)
            return Document(text, sections_from_starts(text, starts), {"title": title} if title else {})
    if tree is None:
        raise ExtractionError(path, f"not parseable as HTML: {error}")
    return _html_body_text(tree)


def _parse_html(data: bytes) -> tuple[Any, str | None, str | None]:
    """The page parsed by lxml, why libxml2 cut it short if it did, and why it cannot be parsed
    (then the tree is None).

    At a resource limit libxml2 stops and lxml returns what was built so far without an error;
    the parser's log is the only sign.
    """
    import lxml.html
    from lxml import etree

    parser = lxml.html.HTMLParser()
    try:
        tree = lxml.html.document_fromstring(data, parser=parser)
    except (etree.ParserError, ValueError) as e:
        return None, None, str(e)
    for entry in parser.error_log:
        if entry.type == etree.ErrorTypes.ERR_RESOURCE_LIMIT:
            return tree, f"libxml2 would cut this page short ({entry.message.strip()})", None
    return tree, None, None


def _html_title(tree: Any) -> str | None:
    if tree is None:
        return None
    title = tree.findtext(".//title")
    return _clean(title) if title and title.strip() else None


def _html_body_text(tree: Any) -> Document:
    for el in tree.xpath("//script|//style|//noscript|//template|//head"):
        el.drop_tree()
    title = tree.findtext(".//title")
    body = tree.find("body")
    raw = body.text_content() if body is not None else tree.text_content()
    return _lines_document(raw, title)


def _lines_document(raw: str, title: str | None) -> Document:
    lines = [line for line in (_clean(x) for x in raw.split("\n")) if line]
    text = "\n".join(lines)
    metadata = {"title": _clean(title)} if title and title.strip() else {}
    return Document(text, sections_from_starts(text, []), metadata)


class _VisibleText(HTMLParser):
    """The text of a page outside <head>, scripts, styles and templates, and its <title>, with no
    limit on nesting depth or text length."""

    _HIDDEN = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text = io.StringIO()
        self.title = io.StringIO()
        self.hidden = 0
        self.in_head = self.in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._HIDDEN:
            self.hidden += 1
        elif tag == "head":
            self.in_head = True
        elif tag == "body":
            self.in_head = False
        elif tag == "title":
            self.in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag == "head":
            self.in_head = False
        elif tag == "title":
            self.in_title = False

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.write(data)
        elif not (self.hidden or self.in_head):
            self.text.write(data)


def _visible_text(data: bytes) -> Document:
    try:
        page = decode_text(data)[0]
    except BinaryContent:
        page = data.decode("utf-8", errors="replace")
    parser = _VisibleText()
    parser.feed(page)
    parser.close()
    del page
    return _lines_document(parser.text.getvalue(), parser.title.getvalue())


def extract_pdf(path: Path, data: bytes) -> Document:
    """Text of every page (pypdf), pages separated by blank lines; an empty user password is tried.

    Extraction stops as soon as the text passes ``max_text_chars``.
    """
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, LimitReachedError, PdfReadError

    limit = current_limits().max_text_chars
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")
            except DependencyError as e:
                raise ExtractionError(path, f"encrypted PDF that needs an extra package to open: {e}") from None
            if not unlocked:
                raise ExtractionError(path, "encrypted PDF (needs a password)")
        pages: list[str] = []
        length = -2  # of the text so far, pages joined by blank lines
        for page in reader.pages:
            pages.append((page.extract_text() or "").strip())
            length += len(pages[-1]) + 2 if pages[-1] else 0
            if length > limit:
                raise ExtractionError(path, too_much_text(limit, limit, more=True))
        info = reader.metadata
        title = info.title if info else None
    except ExtractionError:
        raise
    except LimitReachedError as e:
        raise ExtractionError(
            path, f"a stream in this PDF inflates past pypdf's safety limit ({e}); it is not read"
        ) from None
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
    """Paragraphs and tables in body order (python-docx); ``Heading N`` and ``Title`` styles start sections.

    The archive is refused before anything is inflated if its members add up to more than
    ``max_file_bytes``, or use a compression other than deflate (bzip2 and LZMA inflate without
    a bound per read). ``zipfile`` never inflates a deflated member past the size the archive
    declares for it (a member that holds more fails its checksum), so the declared total bounds
    what is inflated.
    """
    import zipfile

    import docx
    from docx.table import Table

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as e:
        raise ExtractionError(path, f"corrupt DOCX: {e}") from None
    odd = sorted({m.compress_type for m in members} - {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
    if odd:
        raise ExtractionError(
            path, f"not a DOCX: members compressed with method {', '.join(map(str, odd))} (Word uses deflate)"
        )
    limit = current_limits().max_file_bytes
    inflated = sum(m.file_size for m in members)
    if inflated > limit:
        raise ExtractionError(path, too_big(inflated, limit, "inflates to"))
    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ExtractionError(path, f"corrupt DOCX: {e}") from None
    blocks: list[tuple[int | None, str]] = []
    # Style name by style id: python-docx resolves a paragraph's style by scanning every style.
    names: dict[str | None, str] = {}
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            rows = (" | ".join(_clean(cell.text) for cell in row.cells) for row in item.rows)
            blocks.append((None, "\n".join(rows)))
            continue
        style_id = item._p.style
        if style_id not in names:
            names[style_id] = item.style.name if item.style is not None else ""
        style = names[style_id]
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
