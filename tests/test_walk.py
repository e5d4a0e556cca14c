"""The walk: names that are not UTF-8, links that leave the ingest root, entries that exist but cannot be read."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from m3ingest.sources import SourceFailure, SourceFile, read_bytes, walk

from test_sources import run_without_root_powers


def raw(folder: Path, name: bytes) -> Path:
    """The path of ``name`` (any bytes) in ``folder``, as Python names it (undecodable bytes as surrogates)."""
    return folder / os.fsdecode(name)


def files(items) -> list[str]:
    return [i.source_id for i in items if isinstance(i, SourceFile)]


def failures(items) -> dict[str, str]:
    return {i.source_id: i.reason for i in items if isinstance(i, SourceFailure)}


def outside(target: Path) -> str:
    return f"link to {target}, outside the ingest root; set sources.follow_links_outside_root = true to ingest it"


# --- names that are not valid UTF-8 ---------------------------------------------------------------


def test_undecodable_file_and_folder_names_get_escaped_utf8_ids(tmp_path):
    raw(tmp_path, b"m\xffname.md").write_bytes(b"# odd file")
    raw(tmp_path, b"dir\xe9").mkdir()
    raw(tmp_path, b"dir\xe9/in\xc3.txt").write_bytes(b"inside")
    items = list(walk(tmp_path))
    assert files(items) == ["dir\\xe9/in\\xc3.txt", "m\\xffname.md"]
    for item in items:
        item.source_id.encode("utf-8")  # valid UTF-8, so the records and the stores take it
        assert item.path == tmp_path / os.fsdecode(os.fsencode(item.path.relative_to(tmp_path)))
    assert [read_bytes(i.path) for i in items] == [b"inside", b"# odd file"]


def test_valid_utf8_names_keep_their_ids(tmp_path):
    names = ["naïve.md", "日本/語.txt", "emoji 😀.md", "new\nline.md", "back\\xffslash.md"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    items = list(walk(tmp_path))
    assert files(items) == sorted(names) and not failures(items)
    assert all(i.path == tmp_path / i.source_id for i in items)


def test_undecodable_single_file_root(tmp_path):
    path = raw(tmp_path, b"caf\xe9.md")
    path.write_bytes(b"x")
    (item,) = walk(path)
    assert isinstance(item, SourceFile) and item.source_id == "caf\\xe9.md" and item.path == path


def test_two_names_with_one_escaped_id_report_the_second(tmp_path):
    raw(tmp_path, b"m\xffname.md").write_bytes(b"undecodable")
    (tmp_path / "m\\xffname.md").write_text("literal backslash")
    for name in (b"a\xff", b"a\\xff"):
        raw(tmp_path, name).mkdir()
        raw(tmp_path, name + b"/x.md").write_bytes(name)
    items = list(walk(tmp_path))
    assert files(items) == ["a\\xff/x.md", "m\\xffname.md"]
    # The literal backslash (0x5c) comes before the byte 0xff, so it is the one ingested.
    assert [read_bytes(i.path) for i in items if isinstance(i, SourceFile)] == [b"a\\xff", b"literal backslash"]
    (second_dir,) = [i for i in items if isinstance(i, SourceFailure) and i.source_id == "a\\xff/x.md"]
    (second_file,) = [i for i in items if isinstance(i, SourceFailure) and i.source_id == "m\\xffname.md"]
    assert second_dir.path == raw(tmp_path, b"a\xff/x.md") and second_file.path == raw(tmp_path, b"m\xffname.md")
    assert second_file.reason == (
        f"same source id as {tmp_path}/m\\xffname.md (bytes that are not UTF-8 are written \\xNN); rename one of them"
    )
    assert all(i.reason.encode("utf-8") for i in items if isinstance(i, SourceFailure))


def test_failure_reasons_are_valid_utf8(tmp_path):
    root = raw(tmp_path, b"root\xff")
    root.mkdir()
    (tmp_path / "secret.md").write_text("x")
    (root / "leak.md").symlink_to(tmp_path / "secret.md")
    (item,) = walk(root)
    assert isinstance(item, SourceFailure) and item.reason.encode("utf-8")
    assert item.reason == outside(tmp_path / "secret.md")


# --- links that leave the ingest root -------------------------------------------------------------


@pytest.fixture
def linked(tmp_path):
    """``root`` with links inside it and links out of it (to ``/etc/passwd`` and to ``elsewhere``)."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "misc").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "real" / "doc.md").write_text("# inside")
    elsewhere.mkdir()
    (elsewhere / "secret.md").write_text("# outside")
    (root / "misc" / "passwd.txt").symlink_to("/etc/passwd")
    (root / "misc" / "secret.md").symlink_to(elsewhere / "secret.md")
    (root / "out").symlink_to(elsewhere, target_is_directory=True)
    (root / "misc" / "up").symlink_to("../..", target_is_directory=True)
    (root / "misc" / "chain.md").symlink_to("hop.md")
    (root / "misc" / "hop.md").symlink_to("../out/secret.md")
    (root / "misc" / "picture.png").symlink_to(elsewhere / "secret.md")
    (root / "same").symlink_to("real", target_is_directory=True)
    (root / "misc" / "doc.md").symlink_to("../real/doc.md")
    return root, elsewhere


def test_links_outside_the_root_are_reported_not_followed(linked):
    root, elsewhere = linked
    items = list(walk(root))
    assert files(items) == ["misc/doc.md", "real/doc.md", "same/doc.md"]
    assert failures(items) == {
        "misc/chain.md": outside(elsewhere / "secret.md"),
        "misc/hop.md": outside(elsewhere / "secret.md"),
        "misc/passwd.txt": outside(Path(os.path.realpath("/etc/passwd"))),
        "misc/secret.md": outside(elsewhere / "secret.md"),
        "misc/up": outside(root.parent),
        "out": outside(elsewhere),
    }
    assert failures(items)["misc/passwd.txt"].startswith("link to /etc/passwd, outside the ingest root")


def test_links_outside_the_root_are_followed_when_allowed(linked):
    root, _ = linked
    items = list(walk(root, outside_root=True))
    got = files(items)
    assert {"misc/chain.md", "misc/hop.md", "misc/passwd.txt", "misc/secret.md", "out/secret.md"} <= set(got)
    assert "misc/up/elsewhere/secret.md" in got
    assert failures(items) == {"misc/up/root": f"symlink loop (leads back to {root})"}


def test_links_not_followed_at_all_when_symlinks_are_off(linked):
    root, _ = linked
    assert list(walk(root, follow_symlinks=False)) == [
        SourceFile(root / "real" / "doc.md", root, "real/doc.md", *_size_mtime(root / "real" / "doc.md"))
    ]


def _size_mtime(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def test_a_root_that_is_a_link_judges_links_by_where_it_leads(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.md").write_text("x")
    (real / "b.md").symlink_to(real / "a.md")
    (real / "c.md").symlink_to("a.md")
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    items = list(walk(tmp_path / "alias"))
    assert files(items) == ["a.md", "b.md", "c.md"] and not failures(items)


def test_a_single_file_root_that_is_a_link_is_read(tmp_path):
    (tmp_path / "elsewhere.md").write_text("x")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "given.md").symlink_to(tmp_path / "elsewhere.md")
    (item,) = walk(tmp_path / "docs" / "given.md")
    assert isinstance(item, SourceFile) and item.source_id == "given.md"


def test_a_link_outside_one_root_into_another_root_is_still_outside(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (two / "b.md").write_text("x")
    (one / "b-link.md").symlink_to(two / "b.md")
    items = list(walk([one, two]))
    assert files(items) == ["b.md"] and failures(items) == {"b-link.md": outside(two / "b.md")}


# --- entries that exist but cannot be read --------------------------------------------------------


def test_every_unreadable_entry_is_a_failure_with_its_own_id(tmp_path):
    (tmp_path / "a.md").write_text("# readable")
    os.mkfifo(tmp_path / "fifo.md")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.md"))
    (tmp_path / "device.txt").symlink_to("/dev/null")
    (tmp_path / "broken.md").symlink_to(tmp_path / "gone.md")
    (tmp_path / "loop1.md").symlink_to("loop2.md")
    (tmp_path / "loop2.md").symlink_to("loop1.md")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "self").symlink_to("../sub", target_is_directory=True)
    try:
        items = list(walk(tmp_path, outside_root=True))
    finally:
        server.close()
    assert files(items) == ["a.md"]
    assert failures(items) == {
        "broken.md": "broken symlink (its target does not exist)",
        "device.txt": "not a regular file (a character device)",
        "fifo.md": "not a regular file (a FIFO)",
        "loop1.md": "symlink loop",
        "loop2.md": "symlink loop",
        "sock.md": "not a regular file (a socket)",
        "sub/self": f"symlink loop (leads back to {tmp_path / 'sub'})",
    }
    assert [i.source_id for i in items] == sorted(i.source_id for i in items)
    assert all(i.path == tmp_path / i.source_id for i in items)


def test_unreadable_entries_of_unsupported_types_or_excluded_are_not_reported(tmp_path):
    (tmp_path / "a.md").write_text("x")
    os.mkfifo(tmp_path / "fifo.bin")
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    os.mkfifo(tmp_path / "drafts.md")
    (tmp_path / "skip").mkdir()
    (tmp_path / "skip" / "broken.md").symlink_to(tmp_path / "gone.md")
    (tmp_path / ".hidden.md").symlink_to(tmp_path / "gone.md")
    (tmp_path / "only.txt").symlink_to(tmp_path / "gone.txt")
    items = list(walk(tmp_path, include=["*.md"], exclude=["drafts.md", "skip"]))
    assert items == [SourceFile(tmp_path / "a.md", tmp_path, "a.md", *_size_mtime(tmp_path / "a.md"))]


def test_a_single_file_root_that_is_a_fifo_is_a_failure(tmp_path):
    os.mkfifo(tmp_path / "pipe.md")
    (item,) = walk(tmp_path / "pipe.md")
    assert isinstance(item, SourceFailure)
    assert (item.source_id, item.reason) == ("pipe.md", "not a regular file (a FIFO)")


def test_entries_that_cannot_be_stated_or_listed(tmp_path):
    """A folder that can be listed but not entered (mode r--) and one that cannot be listed (mode -wx)."""
    locked = tmp_path / "locked"
    (locked / "sub").mkdir(parents=True)
    (locked / "a.md").write_text("x")
    (locked / "picture.png").write_text("x")
    (tmp_path / "closed").mkdir()
    (tmp_path / "closed" / "b.md").write_text("x")
    (tmp_path / "ok.md").write_text("x")
    locked.chmod(0o444)
    (tmp_path / "closed").chmod(0o333)
    code = f"""
import json
from m3ingest.sources import walk
print(json.dumps([(type(i).__name__, i.source_id, getattr(i, "reason", "")) for i in walk({str(tmp_path)!r})]))
"""
    try:
        items = json.loads(run_without_root_powers(code))
    finally:
        locked.chmod(0o755)
        (tmp_path / "closed").chmod(0o755)
    assert items == [
        ["SourceFailure", "closed", "cannot list folder: Permission denied"],
        ["SourceFailure", "locked/a.md", "cannot read: Permission denied"],
        ["SourceFailure", "locked/sub", "cannot read: Permission denied"],
        ["SourceFile", "ok.md", ""],
    ]
