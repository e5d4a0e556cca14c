"""The ``m3ingest`` command line: each command is a thin shell over the library function of its name.

Errors a user can act on print one line on stderr and exit with an ``ExitCode``, never a traceback.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from m3ingest import api
from m3ingest.config import ConfigError
from m3ingest.errors import ExitCode, IngestError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Documents from folders into Milvus or Qdrant hybrid collections with BGE-M3, and back out.",
)

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML configuration file.")
BackendOpt = typer.Option(None, help="Store backend: milvus or qdrant.")
UriOpt = typer.Option(None, help="Milvus Lite file, Qdrant folder or :memory:, or http(s):// server.")
CollectionOpt = typer.Option(None, help="Collection (or alias) name.")
ModelOpt = typer.Option(None, help="BGE-M3 checkpoint: a Hugging Face name or a local folder.")
DeviceOpt = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: CUDA if available).")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars and no summary text.")
LogOpt = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING or ERROR.")
WaitOpt = typer.Option(
    False, "--wait", help="Queue behind a run that holds the collection's lock (else exit 3 at once)."
)
WaitTimeoutOpt = typer.Option(
    None, "--wait-timeout", help="With --wait: give up after this many seconds (exit 3)."
)


def _fail(message: str, code: ExitCode) -> NoReturn:
    from m3ingest.redact import redact

    typer.echo(f"m3ingest: {redact(message)}", err=True)
    raise typer.Exit(int(code))


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and the matching exit code."""
    from m3ingest.connectors import StoreError
    from m3ingest.encoder import CheckpointError
    from m3ingest.locking import CollectionLocked

    try:
        yield
    except (ConfigError, IngestError, CheckpointError) as e:
        _fail(str(e), ExitCode.CONFIG_ERROR)
    except CollectionLocked as e:
        _fail(str(e), ExitCode.LOCKED)
    except StoreError as e:
        _fail(str(e), ExitCode.STORE_UNAVAILABLE)
    except KeyboardInterrupt:
        _fail("interrupted", ExitCode.FILES_FAILED)


def _setup(log_level: Optional[str], quiet: bool = False) -> None:
    import logging
    import os

    from m3ingest.logs import setup_logging

    try:
        setup_logging(log_level)
    except ValueError as e:
        _fail(str(e), ExitCode.CONFIG_ERROR)
    # Milvus Lite's embedded server logs an ERROR with a traceback for a call it does not
    # implement, which pymilvus then handles; it is not the user's problem.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    if quiet or not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass


def _emit(data: Any, as_json: bool, text: Callable[[], list[str]], quiet: bool) -> None:
    from m3ingest.redact import redact_data

    if as_json:
        typer.echo(json.dumps(redact_data(data), indent=2, default=str))
    elif not quiet:
        for line in text():
            typer.echo(line)


def _run_ingest(
    paths: list[Path],
    delete: bool,
    config: Optional[Path],
    report: Optional[Path],
    as_json: bool,
    quiet: bool,
    log_level: Optional[str],
    **overrides: Any,
) -> None:
    from m3ingest.scheduler import stop_on_signals

    _setup(log_level, quiet or as_json)
    stop = threading.Event()
    with _user_errors(), stop_on_signals(stop):
        summary = api.ingest(
            paths,
            config,
            delete=delete,
            progress=not quiet and not as_json,
            stop=stop,
            **overrides,
        )
    data = summary.to_dict()
    if report is not None:
        from m3ingest.redact import redact_data

        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(redact_data(data), indent=2) + "\n", encoding="utf-8")
    _emit(data, as_json, summary.lines, quiet)
    raise typer.Exit(int(summary.exit_code))


def _ingest_command(delete_default: bool, doc: str) -> Callable[..., None]:
    def command(
        paths: list[Path] = typer.Argument(..., help="Folders to ingest."),
        config: Optional[Path] = ConfigOpt,
        backend: Optional[str] = BackendOpt,
        uri: Optional[str] = UriOpt,
        collection: Optional[str] = CollectionOpt,
        model: Optional[str] = ModelOpt,
        device: Optional[str] = DeviceOpt,
        chunk_size: Optional[int] = typer.Option(None, help="Chunk size in tokens."),
        overlap: Optional[int] = typer.Option(None, help="Overlap between chunks in tokens."),
        include: Optional[list[str]] = typer.Option(None, help="Glob of files to read (repeat)."),
        exclude: Optional[list[str]] = typer.Option(None, help="Glob of files to skip (repeat)."),
        delete: bool = typer.Option(
            delete_default, "--delete/--keep", help="Delete chunks of sources no longer there."
        ),
        report: Optional[Path] = typer.Option(None, help="Write the run summary as JSON here."),
        as_json: bool = JsonOpt,
        quiet: bool = QuietOpt,
        log_level: Optional[str] = LogOpt,
        wait: bool = WaitOpt,
        wait_timeout: Optional[float] = WaitTimeoutOpt,
        executor: Optional[str] = typer.Option(
            None, help="local (this process) or ray (Ray Data stages; pip install 'm3ingest[ray]')."
        ),
        ray_address: Optional[str] = typer.Option(
            None, help="Ray cluster to join, e.g. auto or ray://head:10001 (default: local Ray)."
        ),
        encoders: Optional[int] = typer.Option(None, help="Ray encoder actors (default: one per GPU)."),
        writers: Optional[int] = typer.Option(
            None, help="Ray write actors, when they write to a server store (default: 2)."
        ),
    ) -> None:
        _run_ingest(
            paths,
            delete,
            config,
            report,
            as_json,
            quiet,
            log_level,
            backend=backend,
            uri=uri,
            collection=collection,
            model=model,
            device=device,
            chunk_size=chunk_size,
            overlap=overlap,
            include=include or None,
            exclude=exclude or None,
            wait=wait,
            wait_timeout=wait_timeout,
            executor=executor,
            ray_address=ray_address,
            encoders=encoders,
            writers=writers,
        )

    command.__doc__ = doc
    return command


app.command("ingest")(
    _ingest_command(False, "Ingest folders: new and changed files are encoded, unchanged skipped.")
)
app.command("sync")(
    _ingest_command(True, "Like ingest, and delete the chunks of files that disappeared.")
)


@app.command("search")
def search_command(
    query: str = typer.Argument(..., help="The query text."),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="Number of results."),
    mode: Optional[str] = typer.Option(None, help="dense, sparse, hybrid or m3."),
    filter: Optional[str] = typer.Option(None, help='Metadata filter as JSON, e.g. {"source": "a.md"}.'),
    config: Optional[Path] = ConfigOpt,
    backend: Optional[str] = BackendOpt,
    uri: Optional[str] = UriOpt,
    collection: Optional[str] = CollectionOpt,
    model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt,
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
    log_level: Optional[str] = LogOpt,
) -> None:
    """Search the collection."""
    _setup(log_level, quiet or as_json)
    with _user_errors():
        try:
            where = json.loads(filter) if filter else None
        except json.JSONDecodeError as e:
            raise ConfigError(f"--filter is not valid JSON: {e}") from None
        try:
            results = api.search(
                query, config, k=k, mode=mode, filter=where,
                backend=backend, uri=uri, collection=collection, model=model, device=device,
            )
        except ValueError as e:  # unknown mode, bad filter
            raise ConfigError(str(e)) from None
    data = [
        {"id": r.id, "score": r.score, "scores": r.scores, "text": r.text, "metadata": r.metadata}
        for r in results
    ]

    def text() -> list[str]:
        lines = []
        for i, r in enumerate(results, 1):
            snippet = " ".join(r.text.split())[:200]
            lines.append(f"{i:>2}. {r.score:.4f}  {r.metadata.get('source', '')}  {snippet}")
        return lines or ["no results"]

    _emit(data, as_json, text, quiet)


@app.command("stats")
def stats_command(
    config: Optional[Path] = ConfigOpt,
    backend: Optional[str] = BackendOpt,
    uri: Optional[str] = UriOpt,
    collection: Optional[str] = CollectionOpt,
    as_json: bool = JsonOpt,
    log_level: Optional[str] = LogOpt,
) -> None:
    """What the records and the store hold for the collection."""
    _setup(log_level)
    with _user_errors():
        data = api.stats(config, backend=backend, uri=uri, collection=collection)
    _emit(data, as_json, lambda: [f"{k}: {v}" for k, v in data.items()], False)


@app.command("drop")
def drop_command(
    config: Optional[Path] = ConfigOpt,
    backend: Optional[str] = BackendOpt,
    uri: Optional[str] = UriOpt,
    collection: Optional[str] = CollectionOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = JsonOpt,
    log_level: Optional[str] = LogOpt,
) -> None:
    """Delete the collection and its records (an alias: with every version behind it)."""
    _setup(log_level)
    if not yes and not typer.confirm("Delete the collection and all its chunks?"):
        raise typer.Exit(int(ExitCode.OK))
    with _user_errors():
        data = api.drop(config, backend=backend, uri=uri, collection=collection)
    def lines() -> list[str]:
        if not data["dropped"]:
            return [f"no collection {data['collection']}"]
        versions = f" and its versions {', '.join(data['versions'])}" if data["versions"] else ""
        return [f"dropped {data['collection']}{versions}"]

    _emit(data, as_json, lines, False)


@app.command("verify")
def verify_command(
    paths: Optional[list[Path]] = typer.Argument(
        None, help="With --repair: the folders the collection was ingested from."
    ),
    repair: bool = typer.Option(
        False, "--repair", help="Delete orphan chunks and re-encode the missing ones."
    ),
    config: Optional[Path] = ConfigOpt,
    backend: Optional[str] = BackendOpt,
    uri: Optional[str] = UriOpt,
    collection: Optional[str] = CollectionOpt,
    wait: bool = WaitOpt,
    wait_timeout: Optional[float] = WaitTimeoutOpt,
    as_json: bool = JsonOpt,
    log_level: Optional[str] = LogOpt,
) -> None:
    """Compare the records with the chunk ids the store holds; exit 5 on drift."""
    from m3ingest.drift import verify

    _setup(log_level)
    with _user_errors():
        result = verify(
            config, repair=repair, paths=paths or (), wait=wait, wait_timeout=wait_timeout,
            backend=backend, uri=uri, collection=collection,
        )
    data = result.to_dict()
    _emit(data, as_json, result.lines, False)
    raise typer.Exit(int(ExitCode.OK if result.clean else ExitCode.DRIFT))


@app.command("rebuild")
def rebuild_command(
    paths: list[Path] = typer.Argument(..., help="Folders to ingest into the new version."),
    keep: int = typer.Option(1, min=1, help="Versions that remain, the live one included."),
    allow_failures: bool = typer.Option(
        False, "--allow-failures", help="Switch even when some files failed."
    ),
    config: Optional[Path] = ConfigOpt,
    backend: Optional[str] = BackendOpt,
    uri: Optional[str] = UriOpt,
    collection: Optional[str] = CollectionOpt,
    model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt,
    chunk_size: Optional[int] = typer.Option(None, help="Chunk size in tokens."),
    overlap: Optional[int] = typer.Option(None, help="Overlap between chunks in tokens."),
    wait: bool = WaitOpt,
    wait_timeout: Optional[float] = WaitTimeoutOpt,
    report: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
    as_json: bool = JsonOpt,
    quiet: bool = QuietOpt,
    log_level: Optional[str] = LogOpt,
) -> None:
    """Build a new version of the collection, check it, and move the alias to it."""
    from m3ingest.redact import redact_data
    from m3ingest.scheduler import stop_on_signals
    from m3ingest.versions import RebuildError, rebuild

    _setup(log_level, quiet or as_json)
    stop = threading.Event()
    with _user_errors(), stop_on_signals(stop):
        try:
            result = rebuild(
                paths, config, keep=keep, allow_failures=allow_failures, wait=wait,
                wait_timeout=wait_timeout, progress=not quiet and not as_json, stop=stop,
                backend=backend, uri=uri, collection=collection, model=model, device=device,
                chunk_size=chunk_size, overlap=overlap,
            )
        except RebuildError as e:
            _fail(f"{e}; the alias was not moved", ExitCode.FILES_FAILED)
    data = result.summary()
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(redact_data(data), indent=2) + "\n", encoding="utf-8")
    _emit(
        data,
        as_json,
        lambda: [f"{result.alias} -> {result.collection} ({result.chunks} chunks)"]
        + [f"dropped {name}" for name in result.dropped],
        quiet,
    )
    failed = getattr(result.build, "files_failed", 0)
    raise typer.Exit(int(ExitCode.FILES_FAILED if failed else ExitCode.OK))


@app.command("schedule")
def schedule_command(
    paths: list[Path] = typer.Argument(..., help="Folders to sync at each scheduled time."),
    cron: str = typer.Option(..., "--cron", help='When to run, in cron syntax, e.g. "0 3 * * *".'),
    run_now: bool = typer.Option(False, "--run-now", help="Also run once right away."),
    config: Optional[Path] = ConfigOpt,
    backend: Optional[str] = BackendOpt,
    uri: Optional[str] = UriOpt,
    collection: Optional[str] = CollectionOpt,
    model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt,
    report: Optional[Path] = typer.Option(None, help="Write each run's summary as JSON here."),
    log_level: Optional[str] = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Run sync on a cron schedule until SIGTERM or Ctrl-C (stops between batches)."""
    from m3ingest.scheduler import schedule

    _setup(log_level, True)
    with _user_errors():
        schedule(
            paths, config, cron=cron, run_now=run_now, report=report,
            backend=backend, uri=uri, collection=collection, model=model, device=device,
        )


def main() -> None:
    """Entry point of the ``m3ingest`` command."""
    app(prog_name="m3ingest")


if __name__ == "__main__":
    sys.exit(main())
