"""Embedded engines as a user meets them: a file another process holds, and a terminal kept quiet."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from m3ingest.connectors import StoreError, open_store

pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")

HOLD = {
    "milvus": "from pymilvus import MilvusClient; client = MilvusClient(uri=sys.argv[1])",
    "qdrant": "from qdrant_client import QdrantClient; client = QdrantClient(path=sys.argv[1])",
}
NAMES = {"milvus": "Milvus Lite file", "qdrant": "Qdrant local folder"}


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_a_store_another_process_holds_is_named_with_that_process(tmp_path, capfd, backend):
    uri = str(tmp_path / "held.db")
    code = f"import sys, time\n{HOLD[backend]}\nprint('ready', flush=True)\ntime.sleep(300)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        capfd.readouterr()
        with pytest.raises(StoreError) as e:
            open_store(backend, uri)
        message = str(e.value)
        assert message.startswith(f"{backend} at {uri}: the {NAMES[backend]} is in use by another process")
        assert re.search(rf"\(pid {holder.pid} \({re.escape(sys.executable)} -c import sys, time", message), message
        assert "stop that process, or use a server" in message
        assert capfd.readouterr().err == ""  # Milvus Lite's own traceback is not printed
    finally:
        holder.kill()
        holder.wait()
    with open_store(backend, uri) as s:  # free again
        assert s.list_collections() == []


def test_a_qdrant_folder_open_twice_in_one_process_says_so(tmp_path):
    with (
        open_store("qdrant", str(tmp_path / "q")),
        pytest.raises(
            StoreError, match=rf"^qdrant at {tmp_path}/q: the Qdrant local folder is already open in this process"
        ),
    ):
        open_store("qdrant", str(tmp_path / "q"))


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


@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_client_logs_keeps_pymilvus_off_stderr(written_file, verbose):
    done = _python(f"""
        from m3ingest.connectors import open_store, quiet_client_logs

        quiet_client_logs(verbose={verbose})  # before pymilvus is imported, as the CLI calls it
        s = open_store("milvus", "m.db")
        print(sorted(s.ids_by_source("c")["a.md"]) != [])
    """, written_file)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    # Milvus Lite returns no MVCC timestamp, so pymilvus' query iterator warns on every listing.
    assert ("mvccTs" in done.stderr) == verbose, done.stderr
