"""Hostile inputs, built at run time, ingested by a real ``m3ingest sync`` in a child process: the run
finishes with the documented exit code, the other files are ingested, what the store held for a
bad file is kept, and the child's peak memory stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from m3ingest.config import Config
from m3ingest.errors import ExitCode

from ingest_helpers import TINY, docx_file, paragraphs, snapshot

MIB = 2**20
#: The limit these tests run under (the default is 100 MiB; smaller keeps the files quick to make).
MAX_FILE = 2 * MIB


def config_file(work: Path, backend: str = "milvus", **sources: object) -> Path:
    path = work / "job.toml"
    sources.setdefault("max_file_bytes", MAX_FILE)
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in sources.items())
    path.write_text(
        f'[store]\nbackend = "{backend}"\nuri = "{work / "m3.db"}"\ncollection = "docs"\n'
        f'[model]\nname = "{TINY}"\ndevice = "cpu"\ndtype = "float32"\n'
        "[chunking]\nchunk_size = 256\noverlap = 16\n"
        f"[sources]\n{extra}"
    )
    return path


#: Runs the command line in this interpreter and writes its own peak RSS (KiB) to argv[1] at exit.
_MEASURED = (
    "import resource, sys\n"
    "out = sys.argv.pop(1)\n"
    "try:\n"
    "    from m3ingest.cli import main\n"
    "    main()\n"
    "finally:\n"
    "    open(out, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
)


def sync(folder: Path, work: Path, backend: str = "milvus", **sources: object) -> tuple[dict, int, float]:
    """``m3ingest sync`` in a child process storing under ``work``: its summary, exit code and
    peak RSS (MiB)."""
    work.mkdir(parents=True, exist_ok=True)
    rss = work / "rss.txt"
    args = ["sync", str(folder), "--config", str(config_file(work, backend, **sources)), "--json"]
    result = subprocess.run(
        [sys.executable, "-c", _MEASURED, str(rss), *args], capture_output=True, text=True, timeout=600
    )
    assert result.stdout, result.stderr
    return json.loads(result.stdout), result.returncode, int(rss.read_text()) / 1024


def stored(work: Path, backend: str = "milvus") -> dict:
    """What the store under ``work`` holds (opened in this process: a Milvus Lite file stays held
    by this process afterwards, so a test that syncs again after a look uses Qdrant)."""
    store = {"backend": backend, "uri": str(work / "m3.db"), "collection": "docs"}
    return snapshot(Config.model_validate({"store": store}))


def good_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.md").write_text("# Alpha\n\n" + paragraphs(1, 6))
    (folder / "b.txt").write_text(paragraphs(2, 6))
    docx_file(folder / "memo.docx", "Memo", paragraphs(3, 2))


def zip_bomb_docx(path: Path, inflated: int) -> None:
    """A .docx whose document.xml inflates to ``inflated`` bytes (a few hundred KiB on disk)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with z.open("word/document.xml", "w") as f:
            block = b"<w:p><w:r><w:t>" + b"boom " * 1000 + b"</w:t></w:r></w:p>"
            for _ in range(inflated // len(block) + 1):
                f.write(block)


def hostile_files(folder: Path) -> dict[str, str]:
    """The hostile entries of ``folder``, by source id, with a word their failure reason says."""
    zip_bomb_docx(folder / "bomb.docx", 4 * MAX_FILE)
    with open(folder / "huge.txt", "wb") as f:  # one line, past the limit
        f.write(b"x" * (MAX_FILE + 1))
    with open(folder / "sparse.txt", "wb") as f:  # 2 GB of nothing, on no disk space
        f.truncate(2 * 1024 * MIB)
    os.mkfifo(folder / "pipe.md")
    (folder / "passwd.txt").symlink_to("/etc/passwd")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.md"), "wb") as f:
        f.write(b"# Latin-1 name\n\nA file whose name is Latin-1, not UTF-8.")
    return {
        "bomb.docx": "max_file_bytes",
        "huge.txt": "max_file_bytes",
        "sparse.txt": "max_file_bytes",
        "pipe.md": "FIFO",
        "passwd.txt": "outside the ingest root",
    }


def reasons(summary: dict) -> dict[str, str]:
    return {Path(f["path"]).name: f["reason"] for f in summary["failures"]}


def test_hostile_files_are_reported_and_the_rest_is_ingested(tmp_path):
    good = tmp_path / "good"
    good_files(good)
    baseline, code, rss_good = sync(good, tmp_path / "w1")
    assert code == ExitCode.OK, baseline

    folder = tmp_path / "docs"
    good_files(folder)
    expected = hostile_files(folder)
    summary, code, rss = sync(folder, tmp_path / "w2")

    assert code == ExitCode.FILES_FAILED
    failed = reasons(summary)
    assert set(failed) == set(expected)
    for name, word in expected.items():
        assert word in failed[name], (name, failed[name])
    assert set(stored(tmp_path / "w2")) == {"a.md", "b.txt", "memo.docx", "caf\\xe9.md"}
    assert rss < rss_good + 300, (rss, rss_good)


def test_a_file_turned_hostile_keeps_its_chunks(tmp_path):
    folder = tmp_path / "docs"
    good_files(folder)
    work = tmp_path / "w"
    _, code, _ = sync(folder, work, "qdrant")
    assert code == ExitCode.OK
    before = stored(work, "qdrant")

    (folder / "b.txt").write_bytes(b"y" * (MAX_FILE + 1))
    (folder / "memo.docx").unlink()
    zip_bomb_docx(folder / "memo.docx", 4 * MAX_FILE)
    (folder / "a.md").unlink()
    os.mkfifo(folder / "a.md")
    summary, code, _ = sync(folder, work, "qdrant")

    assert code == ExitCode.FILES_FAILED and summary["files_deleted"] == 0
    assert set(reasons(summary)) == {"a.md", "b.txt", "memo.docx"}
    assert stored(work, "qdrant") == before


def test_a_long_one_line_text_within_the_limits_is_chunked_in_bounded_memory(tmp_path):
    """A one-line text of MAX_FILE - 1 bytes is ingested; the child's peak memory grows by far less
    than the token lists of a whole-text tokenization would need."""
    small = tmp_path / "small"
    good_files(small)
    _, code, rss_small = sync(small, tmp_path / "ws")
    assert code == ExitCode.OK

    folder = tmp_path / "docs"
    good_files(folder)
    words = b"vector store chunk record source encoder sparse dense hybrid query "
    with open(folder / "line.txt", "wb") as f:
        f.write((words * (MAX_FILE // len(words)))[: MAX_FILE - 1])
    summary, code, rss = sync(folder, tmp_path / "w")
    assert code == ExitCode.OK, summary
    assert summary["files_new"] == 4 and summary["chunks_written"] > MAX_FILE // 1000
    assert rss < rss_small + 300, (rss, rss_small)


def test_a_sparse_file_under_a_raised_limit_is_refused_from_its_first_bytes(tmp_path):
    """A 2 GiB file of zero bytes under a 4 GiB limit is refused as binary from its first bytes: the
    child's peak memory grows by far less than the file (measured against a run without it)."""
    small = tmp_path / "small"
    good_files(small)
    _, code, rss_small = sync(small, tmp_path / "ws", max_file_bytes=4 * 1024 * MIB)
    assert code == ExitCode.OK

    folder = tmp_path / "docs"
    good_files(folder)
    with open(folder / "sparse.txt", "wb") as f:
        f.truncate(2 * 1024 * MIB)
    summary, code, rss = sync(folder, tmp_path / "w", max_file_bytes=4 * 1024 * MIB)
    assert code == ExitCode.FILES_FAILED
    assert "binary" in reasons(summary)["sparse.txt"]
    assert rss < rss_small + 300, (rss, rss_small)
