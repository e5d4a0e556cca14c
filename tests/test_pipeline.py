"""The ingest pipeline end to end on real embedded stores (Milvus Lite file, Qdrant local folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import m3ingest
from m3ingest.encoder import M3Encoder
from m3ingest.errors import ExitCode, SettingsMismatchError
from m3ingest.records import Records

from ingest_helpers import (
    TINY,
    docx_file,
    encrypted_pdf,
    make_config,
    paragraphs,
    pdf_bytes,
    records_path,
    snapshot,
)


@pytest.fixture(scope="module")
def encoder() -> M3Encoder:
    return M3Encoder(str(TINY), device="cpu", dtype="float32", batch_tokens=256)


def run(folder: Path, config, encoder, **kw):
    return m3ingest.ingest(folder, config, encoder=encoder, **kw)


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.md").write_text("# Alpha\n\n" + paragraphs(1, 4) + "\n\n## Beta\n\n" + paragraphs(2, 2))
    (folder / "b.txt").write_text(paragraphs(3, 3))
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "c.rst").write_text("Gamma\n=====\n\n" + paragraphs(4, 3) + "\n")


def clean_snapshot(tmp: Path, folder: Path, backend: str, encoder) -> dict:
    """What a fresh ingestion of ``folder`` into a new store holds."""
    config = make_config(tmp / "clean", backend)
    (tmp / "clean").mkdir(exist_ok=True)
    run(folder, config, encoder)
    return snapshot(config)


def test_every_file_type_end_to_end(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "plain.txt").write_text("Plain text about dense retrieval.\n\nSecond paragraph.")
    (folder / "utf16.txt").write_bytes("UTF-16 text with a BOM, café.".encode("utf-16"))
    (folder / "latin1.txt").write_bytes("Légère café crème, déjà vu in Latin-1 encoding here.".encode("latin-1"))
    (folder / "notes.md").write_text("# Title\n\nSome markdown.\n\n## Part\n\nMore markdown.")
    (folder / "guide.markdown").write_text("# Guide\n\nA guide.")
    (folder / "page.rst").write_text("Heading\n=======\n\nReStructuredText body.\n")
    (folder / "page.html").write_text(
        "<html><head><script>var secret = 1;</script></head>"
        "<body><h1>Web</h1><p>Main text of the page.</p></body></html>"
    )
    (folder / "old.htm").write_text("<html><body><p>An old htm page body.</p></body></html>")
    (folder / "paper.pdf").write_bytes(pdf_bytes("A PDF about sparse vectors"))
    docx_file(folder / "memo.docx", "Memo", "A Word document body.")
    config = make_config(tmp_path, backend)

    summary = run(folder, config, encoder)

    assert summary.failures == []
    assert summary.exit_code == ExitCode.OK
    assert summary.files_new == 10
    held = snapshot(config)
    assert sorted(held) == sorted(
        ["plain.txt", "utf16.txt", "latin1.txt", "notes.md", "guide.markdown", "page.rst",
         "page.html", "old.htm", "paper.pdf", "memo.docx"]
    )
    texts = {s: " ".join(c[0] for c in chunks.values()) for s, chunks in held.items()}
    assert "café" in texts["utf16.txt"] and "crème" in texts["latin1.txt"]
    assert "Main text" in texts["page.html"] and "secret" not in texts["page.html"]
    assert "sparse vectors" in texts["paper.pdf"]
    assert "Word document" in texts["memo.docx"]
    for chunks in held.values():
        for text, _index, start, end, _content_hash, metadata in chunks.values():
            assert text.strip() and end > start >= 0
            assert metadata["team"] == "docs" and isinstance(metadata["headings"], list)
    headings = [c[5]["headings"] for c in held["notes.md"].values()]
    assert ["Title", "Part"] in headings


def test_bad_inputs_fail_alone_and_keep_old_chunks(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    write_corpus(folder)
    (folder / "broken.pdf").write_bytes(pdf_bytes("A good PDF first"))
    config = make_config(tmp_path, backend)
    run(folder, config, encoder)
    before = snapshot(config)["broken.pdf"]

    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n garbage that is no pdf")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (folder / "bad.md").write_bytes(b"\xff\xfe\x00\xd8 \x00\x00\x00 broken")
    encrypted_pdf(folder / "locked.pdf", "secret text")
    (folder / "loop.txt").symlink_to(folder / "loop.txt")
    (folder / "long.txt").write_text("word " * 20000)
    (folder / "new.txt").write_text("A new good file arrives with the bad ones.")

    summary = run(folder, config, encoder, delete=True)

    failed = {Path(f["path"]).name: f["reason"] for f in summary.failures}
    assert set(failed) == {"broken.pdf", "empty.txt", "binary.txt", "bad.md", "locked.pdf", "loop.txt"}
    assert all(failed.values())
    assert summary.files_failed == 6 and summary.exit_code == ExitCode.FILES_FAILED
    held = snapshot(config)
    assert held["broken.pdf"] == before
    assert "new.txt" in held and "long.txt" in held and "a.md" in held
    assert sum(len(c[0]) for c in held["long.txt"].values()) >= len("word " * 20000) * 0.9


def test_file_vanishing_mid_run_fails_alone_and_keeps_old_chunks(tmp_path, backend, encoder, monkeypatch):
    import m3ingest.sources as sources

    folder = tmp_path / "docs"
    write_corpus(folder)
    config = make_config(tmp_path, backend)
    run(folder, config, encoder)
    before = snapshot(config)["b.txt"]
    (folder / "b.txt").write_text(paragraphs(9, 2))
    (folder / "new.txt").write_text("A new file ingested in the same run.")

    real_walk = sources.walk

    def walk_then_vanish(*args, **kwargs):
        for item in real_walk(*args, **kwargs):
            if getattr(item, "source_id", None) == "b.txt":
                item.path.unlink()  # listed and stat-ed by the walk, gone before it is read
            yield item

    monkeypatch.setattr(sources, "walk", walk_then_vanish)
    summary = run(folder, config, encoder, delete=True)

    assert [(Path(f["path"]).name, f["reason"]) for f in summary.failures] == [("b.txt", "file disappeared")]
    assert summary.exit_code == ExitCode.FILES_FAILED
    held = snapshot(config)
    assert held["b.txt"] == before
    assert "new.txt" in held and "a.md" in held and "sub/c.rst" in held


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_reported(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    write_corpus(folder)
    (folder / "secret.txt").write_text("hidden")
    (folder / "secret.txt").chmod(0)
    summary = run(folder, make_config(tmp_path, backend), encoder)
    assert [Path(f["path"]).name for f in summary.failures] == ["secret.txt"]


def test_incremental_add_change_delete_equals_clean_ingest(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    write_corpus(folder)
    config = make_config(tmp_path, backend)
    first = run(folder, config, encoder)
    assert (first.files_new, first.files_failed) == (3, 0)
    assert first.tokens_encoded > 0

    again = run(folder, config, encoder)
    assert again.tokens_encoded == 0 and again.chunks_written == 0
    assert again.files_unchanged == 3

    os.utime(folder / "b.txt", ns=(1, 1))
    touched = run(folder, config, encoder)
    assert touched.tokens_encoded == 0 and touched.files_unchanged == 3

    a = (folder / "a.md").read_text().split("\n\n")
    a[2] = "This paragraph was rewritten between the runs."
    (folder / "a.md").write_text("\n\n".join(a))
    (folder / "b.txt").unlink()
    (folder / "d.txt").write_text(paragraphs(7, 2))
    kept = run(folder, config, encoder)
    assert (kept.files_new, kept.files_changed, kept.files_deleted) == (1, 1, 0)
    assert "b.txt" in snapshot(config)

    synced = m3ingest.sync(folder, config, encoder=encoder)
    assert synced.files_deleted == 1 and synced.tokens_encoded == 0
    assert snapshot(config) == clean_snapshot(tmp_path, folder, backend, encoder)
    with Records(records_path(config)) as records:
        assert records.chunk_ids() == {s: set(c) for s, c in snapshot(config).items()}


def test_changed_file_encodes_only_changed_chunks(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    folder.mkdir()
    parts = [paragraphs(i, 1) for i in range(6)]
    (folder / "a.txt").write_text("\n\n".join(parts))
    config = make_config(tmp_path, backend)
    run(folder, config, encoder)
    before = snapshot(config)["a.txt"]

    parts[3] = "A completely different middle paragraph appears here."
    (folder / "a.txt").write_text("\n\n".join(parts))
    summary = run(folder, config, encoder)

    after = snapshot(config)["a.txt"]
    new_ids = set(after) - set(before)
    assert new_ids and len(new_ids) < len(after)
    assert summary.chunks_deleted == len(set(before) - set(after))
    new_tokens = sum(len(encoder.tokenize([after[i][0]])[0]) for i in new_ids)
    # Tokens re-encoded are those of the new chunks (chunk token ids may split words differently).
    assert summary.tokens_encoded <= new_tokens + 2 * len(new_ids)
    assert snapshot(config) == clean_snapshot(tmp_path, folder, backend, encoder)


def test_moved_chunks_are_rewritten_without_encoding(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text(paragraphs(1, 3))
    config = make_config(tmp_path, backend)
    run(folder, config, encoder)

    (folder / "a.txt").write_text(paragraphs(9, 1) + "\n\n" + paragraphs(1, 3))
    summary = run(folder, config, encoder)

    assert summary.chunks_written > 0
    assert snapshot(config) == clean_snapshot(tmp_path, folder, backend, encoder)


def test_interrupted_run_is_reconciled(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    write_corpus(folder)
    config = make_config(tmp_path, backend)
    run(folder, config, encoder)
    with Records(records_path(config)) as records:
        held = records.get("b.txt")
        assert held is not None
        # A run that died after announcing (and maybe writing) new chunks and deleting old ones.
        records.begin("b.txt", ["00000000-0000-5000-8000-000000000001"], held.chunk_ids[:1])
    summary = run(folder, config, encoder)
    assert summary.files_changed == 1
    assert snapshot(config) == clean_snapshot(tmp_path, folder, backend, encoder)
    with Records(records_path(config)) as records:
        assert records.intents() == {}


def test_other_settings_are_refused(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    write_corpus(folder)
    run(folder, make_config(tmp_path, backend), encoder)
    with pytest.raises(SettingsMismatchError, match="m3ingest rebuild"):
        run(folder, make_config(tmp_path, backend, chunk_size=32), encoder)


def test_sync_keeps_sources_of_unreadable_folders(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    write_corpus(folder)
    config = make_config(tmp_path, backend)
    run(folder, config, encoder)
    shutil.rmtree(folder / "sub")
    (folder / "sub").symlink_to(folder)  # a symlink loop where the folder was
    summary = m3ingest.sync(folder, config, encoder=encoder)
    assert summary.files_failed >= 1
    assert "sub/c.rst" in snapshot(config)
