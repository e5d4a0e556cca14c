"""The Ray executor against the local one, on a local Ray runtime and real embedded stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from click.testing import CliRunner

import m3ingest
from m3ingest.cli import app
from m3ingest.config import Config, ConfigError, ExecutorConfig
from m3ingest.connectors import RetryPolicy, open_store
from m3ingest.encoder import M3Encoder
from m3ingest.ingest.ray import workers_write
from m3ingest.ingest.writer import Writer
from m3ingest.records import Records

from ingest_helpers import COLLECTION, TINY, make_config, paragraphs, records_path


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    # 4 logical CPUs on any machine: the prepare tasks keep a slot beside two encoder actors.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def encoder() -> M3Encoder:
    return M3Encoder(str(TINY), device="cpu", dtype="float32", batch_tokens=256)


def on_ray(**executor) -> dict:
    return {"executor": {"kind": "ray", "encoders": 1, "batch_files": 2, **executor}}


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    alpha = "# Alpha\n\n" + paragraphs(1, 4) + "\n\n## Beta\n\n" + paragraphs(2, 2)
    (folder / "a.md").write_text(alpha)
    (folder / "b.txt").write_text(paragraphs(3, 3))
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "c.rst").write_text("Gamma\n=====\n\n" + paragraphs(4, 3) + "\n")
    (folder / "d.txt").write_text(paragraphs(5, 2))


def change_corpus(folder: Path) -> None:
    a = (folder / "a.md").read_text().split("\n\n")
    a[2] = "This paragraph was rewritten between the runs."
    (folder / "a.md").write_text("\n\n".join(a))
    (folder / "b.txt").unlink()
    (folder / "e.txt").write_text(paragraphs(7, 2))


def contents(config: Config) -> dict[str, tuple]:
    """chunk id -> (payload, dense, sparse) of everything in the store."""
    # Retries: an idle Milvus Lite server may refuse the first connection ("too many pings").
    policy = RetryPolicy(attempts=4, initial_wait=0.2)
    with open_store(config.store.backend, config.store.uri, retry_policy=policy) as store:
        name = config.store.collection
        if not store.has_collection(name):  # made at the first write
            return {}
        ids = sorted(i for ids in store.ids_by_source(name).values() for i in ids)
        return {
            c.id: (
                (c.text, c.source, c.chunk_index, c.start, c.end, c.content_hash, c.metadata),
                np.asarray(c.dense),
                dict(c.sparse),
            )
            for c in store.get(name, ids, with_vectors=True)
        }


def assert_same_store(ray_config: Config, local_config: Config) -> None:
    got, want = contents(ray_config), contents(local_config)
    assert got.keys() == want.keys() and got
    for cid, (payload, dense, sparse) in want.items():
        assert got[cid][0] == payload
        np.testing.assert_allclose(got[cid][1], dense, atol=1e-5)
        assert got[cid][2].keys() == sparse.keys()
        np.testing.assert_allclose(list(got[cid][2].values()), list(sparse.values()), atol=1e-5)
    with Records(records_path(ray_config)) as records:
        assert records.chunk_ids() == {
            s: {cid for cid, v in got.items() if v[0][1] == s} for s in records.source_ids()
        }


@pytest.fixture
def ingested_locally(tmp_path, encoder) -> tuple[Path, Config]:
    """The test folder, and its configuration on a Milvus Lite file the local executor filled."""
    folder = tmp_path / "docs"
    write_corpus(folder)
    (tmp_path / "local").mkdir()
    local = make_config(tmp_path / "local", "milvus")
    m3ingest.ingest(folder, local, encoder=encoder)
    return folder, local


def counts(summary) -> tuple:
    s = summary
    return (s.files_new, s.files_changed, s.files_unchanged, s.files_deleted, s.files_failed,
            s.chunks_written, s.chunks_deleted, s.tokens_encoded)


@pytest.mark.parametrize("backend", ["milvus", "qdrant"])
def test_ray_and_local_build_the_same_store(tmp_path, backend, encoder):
    folder = tmp_path / "docs"
    write_corpus(folder)
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    local = make_config(tmp_path / "local", backend)
    distributed = make_config(tmp_path / "ray", backend)

    first_local = m3ingest.ingest(folder, local, encoder=encoder)
    first_ray = m3ingest.ingest(folder, distributed, **on_ray())
    assert counts(first_ray) == counts(first_local) and first_ray.files_new == 4
    assert_same_store(distributed, local)

    change_corpus(folder)
    second_local = m3ingest.sync(folder, local, encoder=encoder)
    second_ray = m3ingest.sync(folder, distributed, **on_ray())
    assert counts(second_ray) == counts(second_local)
    assert (second_ray.files_new, second_ray.files_changed, second_ray.files_deleted) == (1, 1, 1)
    assert_same_store(distributed, local)

    again = m3ingest.sync(folder, distributed, **on_ray())
    assert again.files_unchanged == 4 and again.tokens_encoded == 0


def test_killed_encoder_actor_is_restarted_and_the_run_completes(tmp_path, ingested_locally, monkeypatch):
    folder, local = ingested_locally
    (tmp_path / "ray").mkdir()
    distributed = make_config(tmp_path / "ray", "milvus")

    # Every encoder actor dies (SIGKILL) on its second batch; one file per batch.
    monkeypatch.setenv("M3INGEST_CRASH_AT", "encode_batch:2")
    with pytest.raises(ray.exceptions.RayError):  # with no restarts, the killed actor ends the run
        m3ingest.ingest(folder, distributed, **on_ray(batch_files=1, retries=0))
    with Records(records_path(distributed)) as records:
        recorded = records.chunk_ids()
    assert len(recorded) < 4
    assert {cid for ids in recorded.values() for cid in ids} <= contents(distributed).keys()

    summary = m3ingest.ingest(folder, distributed, **on_ray(batch_files=1, retries=8))
    assert summary.files_failed == 0 and summary.files_new + summary.files_unchanged == 4
    assert_same_store(distributed, local)


@pytest.fixture
def server_config(tmp_path, milvus_server) -> Config:
    """A configuration on the Milvus server, collection "docs" emptied, records under tmp_path."""
    with open_store("milvus", milvus_server) as store:
        store.drop_collection(COLLECTION)
    config = make_config(tmp_path, "milvus")
    store = config.store.model_copy(update={"uri": milvus_server})
    records = config.records.model_copy(update={"path": str(tmp_path / "records")})
    return config.model_copy(update={"store": store, "records": records})


def test_workers_write_a_server_store_equal_to_the_local_executor(
    tmp_path, server_config, encoder, monkeypatch
):
    folder = tmp_path / "docs"
    write_corpus(folder)
    (tmp_path / "local").mkdir()
    local = make_config(tmp_path / "local", "milvus")
    assert workers_write(server_config) and not workers_write(local)

    first_local = m3ingest.ingest(folder, local, encoder=encoder)
    with monkeypatch.context() as m:  # a first run has no rewrites: the driver upserts nothing
        m.setattr(Writer, "_upsert", lambda *a: pytest.fail("the driver upserted chunks"))
        first_ray = m3ingest.ingest(folder, server_config, **on_ray(writers=2))
    assert counts(first_ray) == counts(first_local) and first_ray.chunks_written > 0
    assert_same_store(server_config, local)

    change_corpus(folder)
    second_local = m3ingest.sync(folder, local, encoder=encoder)
    second_ray = m3ingest.sync(folder, server_config, **on_ray())
    assert counts(second_ray) == counts(second_local)
    assert_same_store(server_config, local)
    with Records(records_path(server_config)) as records:
        assert records.intents() == {}


def test_killed_write_actor_is_restarted_and_the_run_completes(
    ingested_locally, server_config, monkeypatch
):
    folder, local = ingested_locally

    # Every write actor dies (SIGKILL) before its second upsert; one file per batch.
    monkeypatch.setenv("M3INGEST_CRASH_AT", "store_write:2")
    with pytest.raises(ray.exceptions.RayError):
        m3ingest.ingest(folder, server_config, **on_ray(batch_files=1, retries=0, writers=1))
    summary = m3ingest.ingest(folder, server_config, **on_ray(batch_files=1, retries=8, writers=1))
    assert summary.files_failed == 0 and summary.files_new + summary.files_unchanged == 4
    assert_same_store(server_config, local)


def test_a_driver_that_dies_after_workers_wrote_is_repaired_by_the_next_run(
    ingested_locally, server_config, monkeypatch
):
    folder, local = ingested_locally

    def die(*args):
        raise RuntimeError("driver died before its first record commit")

    with monkeypatch.context() as m:
        m.setattr(Records, "commit", die)
        with pytest.raises(RuntimeError, match="driver died"):
            m3ingest.ingest(folder, server_config, **on_ray(batch_files=2))
    with Records(records_path(server_config)) as records:
        assert records.source_ids() == [] and len(records.intents()) == 4
    assert contents(server_config)  # chunks no record holds: what the workers wrote

    summary = m3ingest.ingest(folder, server_config, **on_ray())
    assert summary.files_new == 4
    assert_same_store(server_config, local)


CHILD = """
import sys, ray, m3ingest
from m3ingest.config import Config
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
summary = m3ingest.ingest(sys.argv[1], Config.model_validate_json(sys.argv[2]))
print(summary.files_new, summary.chunks_written)
"""


def test_workers_write_on_a_two_cpu_runtime(tmp_path, server_config):
    """The stages' CPU reservations fit a 2-core laptop: prepare tasks, one encoder actor and the
    write actors all get scheduled (a reservation too many would leave the run waiting forever)."""
    folder = tmp_path / "docs"
    write_corpus(folder)
    config = server_config.model_copy(update={"executor": ExecutorConfig(kind="ray", encoders=1)})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), config.model_dump_json()],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files, chunks = map(int, done.stdout.split()[-2:])
    assert files == 4 and chunks == len(contents(server_config))


def test_workers_cannot_write_an_embedded_store(tmp_path):
    folder = tmp_path / "docs"
    write_corpus(folder)
    config = make_config(tmp_path, "qdrant")
    with pytest.raises(ConfigError, match="needs a server store"):
        m3ingest.ingest(folder, config, **on_ray(write="workers"))


def test_cli_executor_option(tmp_path):
    folder = tmp_path / "docs"
    write_corpus(folder)
    store = ["--backend", "qdrant", "--uri", str(tmp_path / "qdrant"), "--model", str(TINY),
             "--device", "cpu", "--json"]
    done = CliRunner().invoke(app, ["ingest", str(folder), *store, "--executor", "ray"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["files_new"] == 4

    wrong = CliRunner().invoke(app, ["ingest", str(folder), *store, "--executor", "spark"])
    assert wrong.exit_code == 2 and "executor" in wrong.stderr


def test_more_encoders_than_the_cluster_can_host_start_with_those_that_fit(tmp_path, ingested_locally, caplog):
    """encoders = 8 on a 4-CPU runtime: a fixed pool of 8 would wait forever; the run starts the
    actors that fit, says so, and builds the same store."""
    folder, local = ingested_locally
    (tmp_path / "ray").mkdir()
    distributed = make_config(tmp_path / "ray", "milvus")
    with caplog.at_level("WARNING", logger="m3ingest.ingest"):
        summary = m3ingest.ingest(folder, distributed, **on_ray(encoders=8))
    assert summary.files_new == 4
    assert "room for 3 encoder actor(s)" in caplog.text and "executor.encoders = 8" in caplog.text
    assert_same_store(distributed, local)
