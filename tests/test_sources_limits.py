"""Sources within limits: files, archives and texts past a limit are reported (never cut), memory
stays bounded whatever the input, and pages libxml2 would cut short are read whole."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from m3ingest.sources import ExtractionError, Limits, extract, read_bytes, read_source

from source_files import make_docx, make_pdf

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


def peak_growth_mib(code: str) -> tuple[dict, float]:
    """Run ``code`` (which sets ``result``) in a child; its result and how far its peak RSS grew."""
    wrapped = f"""
import json, resource
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
{code}
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({{"result": result, "grown": grown}}))
"""
    done = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["result"], out["grown"]


def reason_in_child(path: Path, limits: str = "Limits()") -> str:
    return f"""
from m3ingest.sources import ExtractionError, Limits, extract
try:
    extract({str(path)!r}, limits={limits})
    result = None
except ExtractionError as e:
    result = e.reason
"""


# --- files past max_file_bytes -------------------------------------------------------------------


def test_a_file_over_the_limit_is_refused_by_its_size(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(210 * MB)  # sparse: nothing is written
    want = "is 210.0 MB, over sources.max_file_bytes (100.0 MB); raise it to ingest this file"
    for call in (lambda: extract(big), lambda: read_source(big), lambda: read_bytes(big)):
        with pytest.raises(ExtractionError) as info:
            call()
        assert info.value.reason == want and info.value.path == big
    with pytest.raises(ExtractionError, match=r"is 210.0 MB, over sources.max_file_bytes \(10.0 MB\)"):
        extract(big, limits=Limits(max_file_bytes=10 * MB))
    assert len(read_bytes(big, limit=None)) == 210 * MB


def test_bytes_already_read_are_held_to_the_limit_too(tmp_path):
    path = tmp_path / "given.md"
    with pytest.raises(ExtractionError, match=r"is 2,048 bytes, over sources.max_file_bytes \(1,024 bytes\)"):
        extract(path, data=b"x" * 2048, limits=Limits(max_file_bytes=1024))


def test_a_binary_file_with_a_raised_limit_is_refused_from_its_first_bytes(tmp_path):
    """A 2 GB sparse .txt took 2.6 GB and 45 s to be called binary: now its first 8 KiB suffice."""
    sparse = tmp_path / "sparse.txt"
    with open(sparse, "wb") as f:
        f.truncate(2 * 2**30)
    reason, grown = peak_growth_mib(reason_in_child(sparse, "Limits(max_file_bytes=3 * 2**30)"))
    assert reason == "binary content (NUL bytes)"
    assert grown < 64


def test_text_types_sniff_their_start_and_other_types_do_not(tmp_path):
    (tmp_path / "nul.md").write_bytes(b"# Title\n\x00\x01" + b"text " * 10)
    with pytest.raises(ExtractionError, match="binary content"):
        read_source(tmp_path / "nul.md")
    utf16 = tmp_path / "wide.rst"
    utf16.write_bytes("Title\n=====\n\nBody text.".encode("utf-16"))
    data, digest = read_source(utf16)
    assert extract(utf16, data).text.startswith("Title") and len(digest) == 64
    pdf = make_pdf(tmp_path / "nul.pdf", ["Binary is normal here."])
    assert read_source(pdf)[0] == pdf.read_bytes()


def test_a_file_that_grows_past_the_limit_while_read(tmp_path):
    """Files whose size says nothing (/proc) are read up to the limit and one byte more, no further."""
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs /proc")
    assert b"Name:" in read_bytes(status)
    with pytest.raises(
        ExtractionError, match=r"grew while being read to more than 64 bytes, over sources.max_file_bytes \(64 bytes\)"
    ):
        read_bytes(status, limit=64)


# --- text past max_text_chars --------------------------------------------------------------------


def test_text_over_max_text_chars(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("word " * 200)
    want = "has 1,000 characters of text, over sources.max_text_chars (999); raise it to ingest this file"
    with pytest.raises(ExtractionError) as info:
        extract(path, limits=Limits(max_text_chars=999))
    assert info.value.reason == want
    assert len(extract(path, limits=Limits(max_text_chars=1000)).text) == 1000


def test_pdf_text_is_counted_page_by_page(tmp_path):
    pdf = make_pdf(tmp_path / "pages.pdf", [f"Page {i} says something about vectors." for i in range(30)])
    with pytest.raises(
        ExtractionError, match=r"has more than 100 characters of text, over sources.max_text_chars \(100\)"
    ):
        extract(pdf, limits=Limits(max_text_chars=100))
    assert "Page 29" in extract(pdf).text


def test_limits_are_checked_where_they_are_set():
    from m3ingest.config import ConfigError, load_config

    for name in ("max_file_bytes", "max_text_chars"):
        with pytest.raises(ConfigError, match=rf"sources\.{name}: Input should be greater than or equal to 1"):
            load_config(overrides={"sources": {name: 0}}, env={})


# --- archives ------------------------------------------------------------------------------------


def docx_with_body(path: Path, paragraphs: int, method: int = zipfile.ZIP_DEFLATED) -> Path:
    """A real DOCX whose document.xml holds ``paragraphs`` paragraphs (it inflates to ~60 bytes each)."""
    base = make_docx(path.with_suffix(".base.docx"))
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(path, "w", compression=method) as out:
        for info in src.infolist():
            if info.filename != "word/document.xml":
                out.writestr(info.filename, src.read(info), compress_type=method)
                continue
            xml = src.read(info).decode()
            head, tail = xml.split("<w:body>", 1)
            para = "<w:p><w:r><w:t>The record store keeps every chunk.</w:t></w:r></w:p>"
            member_info = zipfile.ZipInfo("word/document.xml")
            member_info.compress_type = method
            with out.open(member_info, "w", force_zip64=True) as member:
                member.write((head + "<w:body>").encode())
                block = (para * 10_000).encode()
                for _ in range(paragraphs // 10_000):
                    member.write(block)
                member.write(tail.encode())
    return path


def test_docx_that_inflates_past_the_limit_is_refused_before_inflating(tmp_path):
    """A small .docx whose XML inflates to 100s of MB reached 8 GB: now its zip directory stops it."""
    bomb = docx_with_body(tmp_path / "bomb.docx", 4_000_000)
    assert bomb.stat().st_size < 5 * MB
    reason, grown = peak_growth_mib(reason_in_child(bomb))
    assert reason.startswith("inflates to ") and reason.endswith(
        ", over sources.max_file_bytes (100.0 MB); raise it to ingest this file"
    )
    assert float(reason.split()[2]) > 200
    assert grown < 64


def test_docx_whose_zip_directory_understates_a_member(tmp_path):
    """Declared sizes can lie: zipfile inflates a member no further than declared, and the checksum fails."""
    bomb = docx_with_body(tmp_path / "liar.docx", 2_000_000)
    data = bytearray(bomb.read_bytes())
    name = b"word/document.xml"
    for signature, size_at, name_at in ((b"PK\x01\x02", 24, 46), (b"PK\x03\x04", 22, 30)):
        at = 0
        while (at := data.find(signature, at)) >= 0:
            if data[at + name_at : at + name_at + len(name)] == name:
                data[at + size_at : at + size_at + 4] = struct.pack("<I", 4096)
            at += 4
    bomb.write_bytes(bytes(data))
    reason, grown = peak_growth_mib(reason_in_child(bomb))
    assert reason.startswith("corrupt DOCX") or reason.startswith("cannot extract text")
    assert grown < 64


def test_docx_with_members_compressed_otherwise_is_refused(tmp_path):
    path = docx_with_body(tmp_path / "lzma.docx", 10_000, method=zipfile.ZIP_LZMA)
    with pytest.raises(ExtractionError, match="not a DOCX: members compressed with method 14"):
        extract(path)


def test_a_docx_within_the_limit_still_extracts(tmp_path):
    doc = extract(docx_with_body(tmp_path / "fine.docx", 20_000))
    assert doc.text.count("The record store keeps every chunk.") == 20_000


# --- pages libxml2 would cut short ---------------------------------------------------------------


def test_deeply_nested_page_is_read_whole(tmp_path, caplog):
    """200,000 nested divs: lxml returned 1,269 characters of 1 MB of text, without a word."""
    n = 200_000
    page = tmp_path / "deep.html"
    page.write_text(
        "<html><head><title>Deep page</title><style>p{}</style></head><body>"
        + "<div>word " * n
        + "<script>hidden()</script>"
        + "</div>" * n
        + "</body></html>"
    )
    with caplog.at_level(logging.WARNING, logger="m3ingest.sources.formats"):
        doc = extract(page)
    assert doc.text.count("word") == n and "hidden" not in doc.text and "p{}" not in doc.text
    assert doc.metadata == {"title": "Deep page"}
    assert any("Excessive depth" in r.getMessage() and str(page) in r.getMessage() for r in caplog.records)


def test_page_with_a_text_run_too_long_for_libxml2(tmp_path):
    page = tmp_path / "run.htm"
    page.write_text("<html><body><p>" + "abcdefghij" * 1_100_000 + "</p><p>end of page</p></body></html>")
    doc = extract(page)
    assert len(doc.text) > 11_000_000 and doc.text.endswith("end of page")
