"""Where a store is: its parsed URI, read-only opening, errors that name it, and a cheap import."""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from m3ingest.config import StoreConfig
from m3ingest.connectors import (
    ChunkRecord,
    RetryPolicy,
    SchemaMismatchError,
    StoreError,
    StoreLocation,
    StoreNotFoundError,
    is_embedded,
    open_store,
    parse_location,
    store_from_config,
)

POLICY = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02)
SECRET = "s3cret-pw"
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")


@pytest.mark.parametrize(
    "uri, kind, path, display",
    [
        (":memory:", "memory", None, ":memory:"),
        ("./m3ingest.db", "embedded", Path("m3ingest.db"), "./m3ingest.db"),
        ("~/data/q", "embedded", Path.home() / "data" / "q", "~/data/q"),
        ("http://127.0.0.1:19530", "server", None, "http://127.0.0.1:19530"),
        ("https://svc:pa@ss@db.example.com:443/x?y=1", "server", None, "https://db.example.com:443/x?y=1"),
        ("http://tok_abc@qdrant:6333", "server", None, "http://qdrant:6333"),
    ],
)
def test_parse_location(uri, kind, path, display):
    loc = parse_location(uri)
    assert loc == StoreLocation(kind, uri, path, display)
    assert is_embedded(uri) == (kind != "server")


def test_location_exists(tmp_path):
    assert parse_location(":memory:").exists() and parse_location("http://nowhere:1").exists()
    assert not parse_location(str(tmp_path / "x.db")).exists()
    (tmp_path / "x.db").mkdir()
    assert parse_location(str(tmp_path / "x.db")).exists()


# --- read-only opening ----------------------------------------------------------------------------

NAMES = {"milvus": "Milvus Lite file", "qdrant": "Qdrant local folder"}


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
@pytest.mark.parametrize("where", ["missing/x.db", "x.db"])
def test_read_only_open_of_a_missing_store_creates_nothing(tmp_path, backend, where):
    uri = str(tmp_path / where)
    message = f"no {NAMES[backend]} at {uri}; run `m3ingest ingest PATH` first, or set store.uri"
    with pytest.raises(StoreNotFoundError) as e:
        open_store(backend, uri, create=False)
    assert str(e.value) == message
    with pytest.raises(StoreNotFoundError):
        store_from_config(StoreConfig(backend=backend, uri=uri), create=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_read_only_open_of_an_existing_store_reads_it(tmp_path, backend):
    uri = str(tmp_path / "store.db")
    with open_store(backend, uri) as s:
        s.ensure_collection("c", 4)
    with open_store(backend, uri, create=False) as s:
        assert s.list_collections() == ["c"] and s.count("c") == 0


# --- errors name the store, never its credentials ----------------------------------------------------


def _record():
    return ChunkRecord(id=str(uuid.uuid4()), text="t", source="a.md", chunk_index=0, start=0, end=1,
                       content_hash="h", dense=np.ones(4, np.float32) / 2, sparse={1: 0.5})


SYNC_OPERATIONS = {
    "ensure_collection": lambda s: s.ensure_collection("c", 4),
    "has_collection": lambda s: s.has_collection("c"),
    "list_collections": lambda s: s.list_collections(),
    "drop_collection": lambda s: s.drop_collection("c"),
    "upsert": lambda s: s.upsert("c", [_record()]),
    "delete": lambda s: s.delete("c", [str(uuid.uuid4())]),
    "delete_source": lambda s: s.delete_source("c", "a.md"),
    "get": lambda s: s.get("c", [str(uuid.uuid4())], with_vectors=True),
    "count": lambda s: s.count("c"),
    "ids_by_source": lambda s: s.ids_by_source("c"),
    "search": lambda s: s.search("c", dense=np.ones(4, np.float32), sparse={1: 1.0}),
    "set_alias": lambda s: s.set_alias("a", "c"),
    "resolve_alias": lambda s: s.resolve_alias("a"),
    "drop_alias": lambda s: s.drop_alias("a"),
}
ASYNC_OPERATIONS = {
    "aget": lambda s: s.aget("c", [str(uuid.uuid4())]),
    "asearch": lambda s: s.asearch("c", dense=np.ones(4, np.float32), sparse={1: 1.0}),
}


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_every_operation_names(store, label):
    """Every operation, sync and async, fails with a message that starts with ``label``."""
    messages = {}
    for name, op in SYNC_OPERATIONS.items():
        with pytest.raises(StoreError) as e:
            op(store)
        messages[name] = str(e.value)

    async def main():
        for name, op in ASYNC_OPERATIONS.items():
            with pytest.raises(StoreError) as e:
                await op(store)
            messages[name] = str(e.value)
        await store.aclose()

    asyncio.run(main())
    for name, message in messages.items():
        assert message.startswith(f"{label}: ") and SECRET not in message, (name, message)


def test_every_qdrant_operation_names_the_server_without_credentials():
    port = _closed_port()
    store = open_store("qdrant", f"http://svc:{SECRET}@127.0.0.1:{port}", timeout=1, retry_policy=POLICY)
    _assert_every_operation_names(store, f"qdrant at http://127.0.0.1:{port}")
    with pytest.raises(
        StoreError, match=rf"^qdrant at http://127.0.0.1:{port}: list aliases failed after 2 attempts: "
    ):
        store.resolve_alias("a")


def test_milvus_connect_to_a_closed_port_names_the_server_without_credentials():
    port = _closed_port()
    with pytest.raises(StoreError, match=rf"^milvus at http://127.0.0.1:{port}: connect failed after 2 attempts") as e:
        open_store("milvus", f"http://svc:{SECRET}@127.0.0.1:{port}", timeout=1, retry_policy=POLICY)
    assert SECRET not in str(e.value)


@pytest.fixture
def dying_milvus_server(tmp_path):
    """A Milvus Lite server in its own process, and a function that kills it."""
    port = _closed_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "data"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while server.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)

    def kill():
        server.kill()
        server.wait(timeout=30)

    yield port, kill
    kill()


def test_every_milvus_operation_names_the_server_when_it_dies(dying_milvus_server):
    port, kill = dying_milvus_server
    store = open_store("milvus", f"http://svc:{SECRET}@127.0.0.1:{port}", timeout=1, retry_policy=POLICY)
    store.ensure_collection("c", 4)
    kill()
    _assert_every_operation_names(store, f"milvus at http://127.0.0.1:{port}")
    with pytest.raises(StoreError, match=rf"^milvus at http://127.0.0.1:{port}: flush on collection 'c' failed"):
        store.flush("c")


@pytest.mark.parametrize("backend, uri, label", [
    ("milvus", "{tmp}/m.db", "milvus at {tmp}/m.db"),
    ("qdrant", "{tmp}/q", "qdrant at {tmp}/q"),
    ("qdrant", ":memory:", "qdrant in memory"),
])
def test_embedded_errors_name_the_store(tmp_path, backend, uri, label):
    uri, label = uri.format(tmp=tmp_path), label.format(tmp=tmp_path)
    with open_store(backend, uri, retry_policy=POLICY) as s:
        with pytest.raises(StoreError, match=f"^{label}: count on collection 'nope' failed"):
            s.count("nope")
        s.ensure_collection("c", 4)
        with pytest.raises(SchemaMismatchError, match=f"^{label}: collection 'c' does not match"):
            s.ensure_collection("c", 8)
        bad = _record()
        bad.dense = None
        with pytest.raises(StoreError, match=f"^{label}: chunk {bad.id} of a.md has no dense"):
            s.upsert("c", [bad])


# --- import cost -----------------------------------------------------------------------------------


def test_importing_connectors_loads_no_database_client():
    code = (
        "import sys, m3ingest.connectors as c\n"
        "names = [getattr(c, n) for n in c.__all__]\n"
        "from m3ingest.connectors.filters import to_milvus\n"
        "to_milvus({'source': 'a'})\n"
        "print(sorted(m for m in ('numpy', 'pymilvus', 'qdrant_client', 'milvus_lite') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
