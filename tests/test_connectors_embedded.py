"""Embedded engines as a user meets them: a Milvus Lite file opened again reads without noise."""

import os
import subprocess
import sys
import textwrap

import pytest


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


WRITE = """
    import uuid
    import numpy as np
    from m3ingest.connectors import ChunkRecord, open_store

    with open_store("milvus", "m.db") as s:
        s.ensure_collection("c", 4)
        s.upsert("c", [ChunkRecord(id=str(uuid.uuid5(uuid.NAMESPACE_URL, str(i))), text=f"t{i}", source="a.md",
                                   chunk_index=i, start=0, end=1, content_hash="h",
                                   dense=np.eye(4, dtype=np.float32)[i], sparse={i + 1: 0.5}) for i in range(4)])
"""


@pytest.fixture(scope="module")
def written_file(tmp_path_factory):
    """A folder holding a Milvus Lite file ``m.db`` another process wrote (so it opens released)."""
    folder = tmp_path_factory.mktemp("written")
    done = _python(WRITE, folder)
    assert done.returncode == 0, done.stderr
    return folder


def test_reads_of_a_file_opened_again_print_nothing(written_file):
    done = _python("""
        import asyncio
        import numpy as np
        from m3ingest.connectors import open_store

        s = open_store("milvus", "m.db", create=False)
        q = np.eye(4, dtype=np.float32)[2]
        hits = s.search("c", dense=q, sparse={3: 1.0}, k=2)
        assert hits[0].record.text == "t2", hits
        assert len(s.get("c", [hits[0].id])) == 1 and s.count("c") == 4

        async def main():
            found = await s.asearch("c", dense=q, sparse={3: 1.0}, k=2)
            await s.aclose()
            return found

        assert [h.id for h in asyncio.run(main())] == [h.id for h in hits]
        print("ok")
    """, written_file)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")


def test_a_collection_is_checked_loaded_once(written_file):
    done = _python("""
        import numpy as np
        from m3ingest.connectors import open_store

        s = open_store("milvus", "m.db")
        calls = []
        client = s.client

        class Counting:
            def __getattr__(self, name):
                calls.append(name)
                return getattr(client, name)

        s.client = Counting()
        for _ in range(3):
            s.search("c", dense=np.ones(4, np.float32), sparse={1: 1.0}, k=2)
            s.count("c")
        print(calls.count("get_load_state"), calls.count("load_collection"))
    """, written_file)
    assert done.stdout.split() == ["1", "1"], done.stderr
