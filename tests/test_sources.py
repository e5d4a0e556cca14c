"""Sources: walking folders and extracting text from each file type, and every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from m3ingest.sources import (
    Document,
    ExtractionError,
    Section,
    SourceFailure,
    SourceFile,
    content_hash,
    extract,
    extractors,
    glob_match,
    read_bytes,
    register_extractor,
    supported_suffixes,
    walk,
)

from source_files import make_docx, make_pdf

DOCS = Path(__file__).parent / "fixtures" / "docs"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def encrypt_pdf(src: Path, dst: Path, user_password: str) -> Path:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(src))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="RC4-128")
    with open(dst, "wb") as f:
        writer.write(f)
    return dst


def section_of(doc: Document, needle: str) -> Section:
    pos = doc.text.index(needle)
    return next(s for s in doc.sections if s.start <= pos < s.end)


def ids(items) -> list[str]:
    return [i.source_id for i in items]


@pytest.fixture
def registry(monkeypatch):
    """The extractor registry, restored after the test."""
    monkeypatch.setattr(extractors, "_REGISTRY", dict(extractors._REGISTRY))
    return extractors._REGISTRY


# --- walk ------------------------------------------------------------------------------------------


def test_walk_fixture_folder_in_source_id_order():
    items = list(walk(DOCS))
    assert all(isinstance(i, SourceFile) for i in items)
    assert ids(items) == ["guides/config.rst", "guides/install.md", "notes.txt", "page.html", "tiny.html"]
    for item in items:
        st = item.path.stat()
        assert (item.size, item.mtime_ns) == (st.st_size, st.st_mtime_ns)
        assert item.root == DOCS and item.path == DOCS / item.source_id


def test_walk_order_is_code_point_order_of_ids(tmp_path):
    for name in ["a/b.txt", "a.txt", "a-b.txt", "a0.txt", "B.txt", "a/c/d.txt", "a/a.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    got = ids(walk(tmp_path))
    assert got == sorted(got) and len(got) == 7


def test_walk_default_excludes_and_unsupported_suffixes(tmp_path):
    for name in [
        "keep.md",
        ".hidden.md",
        ".git/config.txt",
        ".venv/lib/x.txt",
        "node_modules/pkg/readme.md",
        "sub/__pycache__/x.txt",
        "sub/.svn/x.txt",
        "image.png",
        "archive.tar.gz",
        "Upper.TXT",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert ids(walk(tmp_path)) == ["Upper.TXT", "keep.md"]
    everything = ids(walk(tmp_path, default_excludes=False))
    assert ".git/config.txt" in everything and "node_modules/pkg/readme.md" in everything


def test_walk_include_and_exclude_globs(tmp_path):
    for name in ["a.md", "docs/b.md", "docs/deep/c.md", "docs/deep/d.txt", "drafts/e.md", "build/f.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert ids(walk(tmp_path, include=["*.md"])) == ["a.md", "build/f.md", "docs/b.md", "docs/deep/c.md", "drafts/e.md"]
    assert ids(walk(tmp_path, include=["docs/**/*.md"])) == ["docs/b.md", "docs/deep/c.md"]
    assert ids(walk(tmp_path, include=["docs/**"])) == ["docs/b.md", "docs/deep/c.md", "docs/deep/d.txt"]
    assert ids(walk(tmp_path, exclude=["drafts/**", "build", "*.txt"])) == ["a.md", "docs/b.md", "docs/deep/c.md"]
    assert ids(walk(tmp_path, include=["**/*.md"], exclude=["docs/deep"])) == [
        "a.md",
        "build/f.md",
        "docs/b.md",
        "drafts/e.md",
    ]


@pytest.mark.parametrize(
    ("source_id", "pattern", "matches"),
    [
        ("a/b/c.md", "*.md", True),
        ("a/b/c.md", "a/*.md", False),
        ("a/b/c.md", "a/**/*.md", True),
        ("a/c.md", "a/**/*.md", True),
        ("a/b/c.md", "**/c.md", True),
        ("c.md", "**/c.md", True),
        ("a/b/c.md", "a/**", True),
        ("a/b/c.md", "./a/b/c.md", True),
        ("x1.txt", "x[0-9].txt", True),
        ("xa.txt", "x[!0-9].txt", True),
        ("x.txt", "x?txt", True),
        ("a/x.txt", "a?x.txt", False),
        ("notes.md", "NOTES.md", False),
    ],
)
def test_glob_match(source_id, pattern, matches):
    assert glob_match(source_id, pattern) is matches


def test_walk_single_file_and_missing_root(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("hello")
    missing = tmp_path / "nope"
    items = list(walk([f, missing, tmp_path / "x.bin"]))
    assert isinstance(items[0], SourceFile) and items[0].source_id == "one.txt" and items[0].root == tmp_path
    assert isinstance(items[1], SourceFailure) and (items[1].source_id, items[1].reason) == (".", "does not exist")
    assert isinstance(items[2], SourceFailure)


def test_walk_symlink_loop_is_reported_not_followed(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "doc.md").write_text("# Hi")
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(".", target_is_directory=True)
    items = list(walk(tmp_path))
    failures = [i for i in items if isinstance(i, SourceFailure)]
    assert ids(i for i in items if isinstance(i, SourceFile)) == ["a/b/doc.md"]
    assert sorted(ids(failures)) == ["a/b/up", "a/self"]
    assert all("symlink loop" in f.reason for f in failures)


def test_walk_symlinks_followed_or_skipped(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "doc.txt").write_text("x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(real, target_is_directory=True)
    (root / "again").symlink_to(real, target_is_directory=True)
    (root / "file.txt").symlink_to(real / "doc.txt")
    (root / "broken.md").symlink_to(tmp_path / "gone.md")
    items = list(walk(root, outside_root=True))
    assert ids(i for i in items if isinstance(i, SourceFile)) == ["again/doc.txt", "file.txt", "linked/doc.txt"]
    (broken,) = [i for i in items if isinstance(i, SourceFailure)]
    assert broken.source_id == "broken.md" and "broken symlink" in broken.reason
    assert list(walk(root, follow_symlinks=False)) == []


def test_walk_reports_fifo_and_duplicate_ids_across_roots(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        root.mkdir()
        (root / "README.md").write_text("# x")
    os.mkfifo(one / "pipe.txt")
    items = list(walk([one, two]))
    assert isinstance(items[0], SourceFile) and items[0].source_id == "README.md"
    assert isinstance(items[1], SourceFailure) and "not a regular file" in items[1].reason
    assert isinstance(items[2], SourceFailure) and items[2].path == two / "README.md"
    assert str(one) in items[2].reason


# --- extraction of each type ----------------------------------------------------------------------


def test_plain_text():
    doc = extract(DOCS / "notes.txt")
    assert doc.text.startswith("Field notes on vector search\n\nHybrid retrieval")
    assert doc.sections == [Section(0, len(doc.text), ())]


def test_markdown_heading_paths():
    doc = extract(DOCS / "guides" / "install.md")
    assert doc.metadata == {"title": "Install"}
    assert section_of(doc, "Intro text").headings == ()
    assert section_of(doc, "front matter").headings == ()
    assert section_of(doc, "two ways").headings == ("Install",)
    assert section_of(doc, "pip install m3ingest` in").headings == ("Install", "From PyPI")
    assert section_of(doc, "# this comment is code").headings == ("Install", "From PyPI")
    assert section_of(doc, "editable mode").headings == ("Install", "From source")
    assert section_of(doc, "ingest ./docs").headings == ("Usage",)
    assert section_of(doc, "--help").headings == ("Usage", "Options")
    assert doc.text[section_of(doc, "editable mode").start :].startswith("## From source")
    assert doc.sections[-1].end == len(doc.text)


def test_rst_heading_paths():
    doc = extract(DOCS / "guides" / "config.rst")
    assert doc.metadata == {"title": "Configuration"}
    assert section_of(doc, "One TOML").headings == ("Configuration",)
    assert section_of(doc, "default store").headings == ("Configuration", "Stores")
    assert section_of(doc, "locally").headings == ("Configuration", "Stores", "Qdrant")
    assert section_of(doc, "hub").headings == ("Configuration", "Models")
    assert doc.sections[0].start == 0 and doc.text.startswith("=============\nConfiguration")


def test_html_main_text_without_scripts_or_menus():
    doc = extract(DOCS / "page.html")
    assert "incremental and idempotent" in doc.text and "persistent volume" in doc.text
    for noise in ("UA-SCRIPT-CONTENT", "SCRIPT-IN-BODY", "font-family", "<p>", "Copyright"):
        assert noise not in doc.text
    assert doc.metadata["title"] == "Scheduling re-index jobs"
    assert section_of(doc, "crontab").headings == ("Scheduling re-index jobs", "Cron")
    assert section_of(doc, "persistent volume").headings == ("Scheduling re-index jobs", "Kubernetes")


def test_tiny_html_falls_back_to_body_text():
    doc = extract(DOCS / "tiny.html")
    assert doc.text == "Just one line."
    assert doc.metadata == {"title": "Tiny"}


def test_pdf_pages(tmp_path):
    pdf = make_pdf(tmp_path / "two.pdf", ["First page about Milvus (Lite).", "Second page about Qdrant."])
    doc = extract(pdf)
    assert doc.text == "First page about Milvus (Lite).\n\nSecond page about Qdrant."
    assert doc.metadata["pages"] == 2


def test_pdf_encrypted_with_and_without_a_password(tmp_path):
    plain = make_pdf(tmp_path / "plain.pdf", ["Secret plans."])
    locked = encrypt_pdf(plain, tmp_path / "locked.pdf", user_password="hunter2")
    with pytest.raises(ExtractionError, match="encrypted PDF") as info:
        extract(locked)
    assert info.value.path == locked
    open_to_all = encrypt_pdf(plain, tmp_path / "open.pdf", user_password="")
    assert extract(open_to_all).text == "Secret plans."


def test_pdf_corrupt(tmp_path):
    good = make_pdf(tmp_path / "good.pdf", ["Some text."]).read_bytes()
    for name, data in [("garbage.pdf", b"%PDF-1.4\n" + os.urandom(2000)), ("truncated.pdf", good[: len(good) // 3])]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ExtractionError) as info:
            extract(path)
        assert info.value.path == path and info.value.reason


def test_docx_headings_and_tables(tmp_path):
    doc = extract(make_docx(tmp_path / "handbook.docx"))
    assert doc.metadata == {"title": "Operations handbook"}
    assert section_of(doc, "Preface").headings == ()
    assert section_of(doc, "Copy the record").headings == ("Backups",)
    assert section_of(doc, "Stop the ingest").headings == ("Backups", "Restore")
    assert section_of(doc, "milvus | m3ingest.db").headings == ("Backups", "Restore")
    assert section_of(doc, "JSON report").headings == ("Monitoring",)


def test_docx_corrupt(tmp_path):
    path = tmp_path / "bad.docx"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ExtractionError, match="DOCX"):
        extract(path)


# --- encodings ------------------------------------------------------------------------------------

TEXT = "Café déjà vu: naïve “quotes” – 10 €\nSecond line."


@pytest.mark.parametrize(
    "encoded",
    [
        TEXT.encode("utf-8"),
        b"\xef\xbb\xbf" + TEXT.encode("utf-8"),
        TEXT.encode("utf-16"),
        b"\xfe\xff" + TEXT.encode("utf-16-be"),
        TEXT.replace("\n", "\r\n").encode("cp1252"),
    ],
    ids=["utf-8", "utf-8-bom", "utf-16-le-bom", "utf-16-be-bom", "cp1252-crlf"],
)
def test_text_encodings(tmp_path, encoded):
    path = tmp_path / "t.txt"
    path.write_bytes(encoded)
    assert extract(path).text == TEXT


def test_latin1_legacy_text(tmp_path):
    text = "Le garçon a mangé une crème brûlée à Besançon, où il était né.\n" * 5
    path = tmp_path / "fr.md"
    path.write_bytes(text.encode("latin-1"))
    assert extract(path).text == text


# --- bad input ------------------------------------------------------------------------------------


def test_binary_with_text_suffix(tmp_path):
    path = tmp_path / "blob.txt"
    path.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(ExtractionError, match="binary"):
        extract(path)
    png = tmp_path / "image.md"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(4000))
    with pytest.raises(ExtractionError):
        extract(png)


@pytest.mark.parametrize("suffix", [".txt", ".md", ".rst", ".html", ".pdf", ".docx"])
def test_zero_byte_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.touch()
    with pytest.raises(ExtractionError) as info:
        extract(path)
    assert info.value.reason == "empty file"


def test_whitespace_only_and_markup_only(tmp_path):
    (tmp_path / "blank.txt").write_text(" \n\t\n")
    (tmp_path / "blank.html").write_text("<html><body><script>x()</script></body></html>")
    for name in ("blank.txt", "blank.html"):
        with pytest.raises(ExtractionError, match="no text"):
            extract(tmp_path / name)


def test_file_vanished_between_walk_and_extract(tmp_path):
    (tmp_path / "gone.md").write_text("# Soon gone")
    (item,) = walk(tmp_path)
    item.path.unlink()
    with pytest.raises(ExtractionError) as info:
        extract(item.path)
    assert info.value.reason == "file disappeared" and info.value.path == item.path


def test_folder_or_fifo_named_like_a_document(tmp_path):
    (tmp_path / "folder.txt").mkdir()
    os.mkfifo(tmp_path / "pipe.txt")  # no writer: a blocking read would hang the run
    for name, kind in [("folder.txt", "directory"), ("pipe.txt", "FIFO")]:
        with pytest.raises(ExtractionError, match=f"not a regular file.*{kind}"):
            extract(tmp_path / name)


def run_without_root_powers(code: str) -> str:
    """Run Python ``code`` in a child that cannot bypass file modes (root's capabilities dropped)."""
    command = [sys.executable, "-c", code]
    if AS_ROOT:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: mode 000 would not stop reads")
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *command]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=True, cwd=Path(__file__).parents[1]
    )
    return done.stdout


def test_permission_denied_file_and_folder(tmp_path):
    (tmp_path / "secret.txt").write_text("x")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "inside.md").write_text("x")
    (tmp_path / "ok.txt").write_text("x")
    (tmp_path / "secret.txt").chmod(0)
    (tmp_path / "locked").chmod(0)
    code = f"""
import json
from m3ingest.sources import ExtractionError, SourceFile, extract, walk
try:
    extract({str(tmp_path / "secret.txt")!r})
    reason = None
except ExtractionError as e:
    reason = e.reason
items = [(type(i).__name__, i.source_id, getattr(i, "reason", "")) for i in walk({str(tmp_path)!r})]
print(json.dumps({{"reason": reason, "items": items}}))
"""
    try:
        out = json.loads(run_without_root_powers(code))
    finally:
        (tmp_path / "secret.txt").chmod(0o644)
        (tmp_path / "locked").chmod(0o755)
    assert out["reason"].startswith("permission denied")
    (locked, ok, secret) = out["items"]
    assert locked[:2] == ["SourceFailure", "locked"] and "Permission denied" in locked[2]
    assert ok[:2] == ["SourceFile", "ok.txt"] and secret[:2] == ["SourceFile", "secret.txt"]


def test_symlink_loop_file(tmp_path):
    (tmp_path / "a.txt").symlink_to(tmp_path / "b.txt")
    (tmp_path / "b.txt").symlink_to(tmp_path / "a.txt")
    with pytest.raises(ExtractionError, match="symlink loop"):
        extract(tmp_path / "a.txt")
    assert {f.reason.split(" ")[0] for f in walk(tmp_path)} == {"symlink"}


def test_very_long_single_line(tmp_path):
    line = "token " * 400_000
    (tmp_path / "long.txt").write_text(line)
    (tmp_path / "long.md").write_text("# Title\n" + line)
    assert extract(tmp_path / "long.txt").text == line
    doc = extract(tmp_path / "long.md")
    assert doc.sections[-1].headings == ("Title",) and doc.sections[-1].end == len(doc.text)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.xyz"
    path.write_text("x")
    with pytest.raises(ExtractionError, match=r"unsupported file type '\.xyz'"):
        extract(path)


# --- registry, reading once, hashing --------------------------------------------------------------


def test_register_extractor_adds_a_type(tmp_path, registry):
    def csv_rows(path: Path, data: bytes) -> Document:
        text = "\n".join(" ".join(row.split(",")) for row in data.decode().splitlines())
        return Document(text, [Section(0, len(text), (path.stem,))], {"rows": text.count("\n") + 1})

    (tmp_path / "table.CSV").write_text("a,b\nc,d")
    assert ids(walk(tmp_path)) == []
    register_extractor(["csv"], csv_rows)
    assert ".csv" in supported_suffixes()
    (item,) = walk(tmp_path)
    doc = extract(item.path)
    assert doc.text == "a b\nc d" and doc.metadata == {"rows": 2}


def test_failing_custom_extractor_is_an_extraction_error(tmp_path, registry):
    def broken(path: Path, data: bytes) -> Document:
        raise RuntimeError("parser bug")

    register_extractor(".log", broken)
    path = tmp_path / "x.log"
    path.write_text("x")
    with pytest.raises(ExtractionError, match="RuntimeError: parser bug"):
        extract(path)
    with pytest.raises(ValueError):
        register_extractor(".", broken)


def test_read_once_then_hash_and_extract(tmp_path):
    path = tmp_path / "a.md"
    path.write_text("# On disk")
    data = read_bytes(path)
    assert content_hash(data) == hashlib.sha256(b"# On disk").hexdigest()
    assert extract(path, data=b"# Given bytes").text == "# Given bytes"


def test_every_fixture_extracts_through_the_walk():
    for item in walk(DOCS):
        assert extract(item.path).text.strip()


def test_fixture_folder_copy_keeps_ids(tmp_path):
    copy = shutil.copytree(DOCS, tmp_path / "docs")
    assert ids(walk(copy)) == ids(walk(DOCS))


def test_every_registered_type_gives_real_text(tmp_path):
    """One generated file per built-in type through its extractor's real libraries (as on a fresh
    install: trafilatura needs lxml_html_clean for HTML since lxml 5.2)."""
    sentence = "Hybrid retrieval ranks chunks by dense and sparse scores together."
    paragraphs = "".join(f"<p>{sentence} Paragraph {i} adds a little more context to the page.</p>" for i in range(12))
    page = (
        "<html><head><title>Search</title></head><body><nav>Home | About</nav>"
        f"<article><h1>Search</h1>{paragraphs}</article></body></html>"
    )
    files = {
        ".txt": sentence,
        ".md": f"# Search\n\n{sentence}\n",
        ".markdown": f"Search\n======\n\n{sentence}\n",
        ".rst": f"Search\n======\n\n{sentence}\n",
        ".html": page,
        ".htm": page,
    }
    assert set(files) | {".pdf", ".docx"} == supported_suffixes()
    for suffix, content in files.items():
        (tmp_path / f"doc{suffix}").write_text(content)
    make_pdf(tmp_path / "doc.pdf", [sentence])
    make_docx(tmp_path / "doc.docx")
    for suffix in sorted(supported_suffixes()):
        path = tmp_path / f"doc{suffix}"
        doc = extract(path)
        expected = "Copy the record store together with the database." if suffix == ".docx" else sentence
        assert expected in doc.text, (suffix, doc.text[:200])
    assert "Home | About" not in extract(tmp_path / "doc.html").text  # trafilatura's main-content path ran
