"""The ``m3ingest`` command line: each command is a thin shell over the library function of its name.

Options shared by several commands are defined once (``store_options``, ``model_options``, ...);
their names are the flat setting names of ``m3ingest.config.OPTIONS``. Arguments and the
configuration are checked before any store or model is opened. An error the user can act on
prints one line on stderr and exits with its ``ExitCode``; only a bug prints a traceback.
This module imports nothing heavy, so ``--help`` answers at once.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from m3ingest.errors import ConfigError, ExitCode, M3IngestError

F = TypeVar("F", bound=Callable[..., Any])

_MODES = ("dense", "sparse", "hybrid", "m3")


def _fail(message: str, code: ExitCode) -> NoReturn:
    from m3ingest.printable import printable
    from m3ingest.redact import redact

    click.echo(f"m3ingest: {printable(redact(message))}", err=True)
    sys.exit(int(code))


class _Commands(click.Group):
    """The command group: turns the errors a user can act on into one line and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except M3IngestError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", ExitCode.INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:
            import traceback

            from m3ingest.redact import redact

            click.echo(redact(traceback.format_exc()), err=True)
            _fail(
                f"internal error ({type(e).__name__}: {e}); this is a bug, please report it with "
                "the traceback above",
                ExitCode.INTERNAL_ERROR,
            )


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="m3ingest")
def app() -> None:
    """Documents from files and folders into Milvus or Qdrant hybrid collections with BGE-M3,
    and back out."""


# -- shared options -------------------------------------------------------------------------------


def _apply(f: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        f = option(f)
    return f


def store_options(f: F) -> F:
    """--config, --backend, --uri, --collection."""
    return _apply(
        f,
        [
            click.option("--config", "-c", type=click.Path(path_type=Path), metavar="FILE",
                         help="TOML configuration file."),
            click.option("--backend", type=click.Choice(["milvus", "qdrant"]), help="Store backend."),
            click.option("--uri", metavar="URI",
                         help="Milvus Lite file, Qdrant folder or :memory:, or http(s):// server."),
            click.option("--collection", metavar="NAME", help="Collection (or alias) name."),
        ],
    )


def model_options(f: F) -> F:
    """--model, --revision, --device."""
    return _apply(
        f,
        [
            click.option("--model", metavar="NAME|DIR",
                         help="BGE-M3 checkpoint: a Hugging Face id or a local folder."),
            click.option("--revision", metavar="REV", help="Hub branch, tag or commit of --model."),
            click.option("--device", metavar="DEVICE",
                         help="cpu, cuda, cuda:1, ... (default: CUDA if available)."),
        ],
    )


def chunking_options(f: F) -> F:
    """--chunk-size, --overlap."""
    return _apply(
        f,
        [
            click.option("--chunk-size", type=int, metavar="TOKENS", help="Chunk size in tokens."),
            click.option("--overlap", type=int, metavar="TOKENS", help="Overlap between chunks in tokens."),
        ],
    )


def lock_options(f: F) -> F:
    """--wait, --wait-timeout."""
    return _apply(
        f,
        [
            click.option("--wait", is_flag=True,
                         help="Queue behind a run that holds the collection's lock (else exit 3 at once)."),
            click.option("--wait-timeout", type=float, metavar="SECONDS",
                         help="With --wait: give up after this many seconds (exit 3)."),
        ],
    )


def output_options(f: F) -> F:
    """--json, --quiet, --verbose, --log-level."""
    return _apply(
        f,
        [
            click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."),
            click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary text."),
            click.option("--verbose", "-v", count=True,
                         help="More log lines (-v: INFO, -vv: DEBUG, with the database clients' own)."),
            click.option("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR."),
        ],
    )


def _report_option(f: F) -> F:
    return click.option("--report", type=click.Path(path_type=Path), metavar="FILE",
                        help="Write the result as JSON here.")(f)


def _setup(options: dict[str, Any]) -> None:
    """Logging and library noise, from --log-level, --verbose and --quiet."""
    import os

    from m3ingest.connectors import quiet_client_logs
    from m3ingest.logs import setup_logging

    verbose = options.pop("verbose", 0)
    try:
        setup_logging(options.pop("log_level", None), verbose)
    except ValueError as e:
        _fail(str(e), ExitCode.CONFIG_ERROR)
    quiet_client_logs(verbose=verbose > 0)
    if not verbose:  # the model's own loading bars and notices, and gRPC's own lines (keepalive
        # chatter between pymilvus and Milvus Lite): m3ingest shows its progress and its errors
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def _emit(data: Any, as_json: bool, text: Callable[[], list[str]], quiet: bool = False) -> None:
    from m3ingest.printable import printable
    from m3ingest.redact import redact_data

    if as_json:
        click.echo(json.dumps(redact_data(data), indent=2, default=str))
    elif not quiet:
        for line in text():
            click.echo(printable(line))


def _write_report(path: Path | None, data: Any) -> None:
    if path is None:
        return
    from m3ingest.redact import redact_data

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(redact_data(data), indent=2, default=str) + "\n", encoding="utf-8")
    except OSError as e:
        _fail(f"cannot write the report {path}: {e.strerror or e}", ExitCode.STATE_BROKEN)


def _config(options: dict[str, Any]) -> Any:
    """The configuration the command runs with; its errors surface before any work starts."""
    from m3ingest.config import resolve_config

    return resolve_config(options.pop("config", None), **options)


# -- commands -----------------------------------------------------------------------------------


def _ingest_command(name: str, delete_default: bool, summary: str) -> None:
    @app.command(name, help=summary)
    @click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="PATH...")
    @store_options
    @model_options
    @chunking_options
    @click.option("--include", multiple=True, metavar="GLOB", help="Only files matching this glob (repeat).")
    @click.option(
        "--exclude", multiple=True, metavar="GLOB", help="Skip files and folders matching this glob (repeat)."
    )
    @click.option("--delete/--no-delete", default=delete_default, show_default=True,
                  help="Delete the chunks of files that are no longer there.")
    @_report_option
    @lock_options
    @click.option("--executor", type=click.Choice(["local", "ray"]),
                  help="local (this machine) or ray (Ray Data stages; pip install 'm3ingest[ray]').")
    @click.option("--workers", type=int, metavar="N",
                  help="Local executor: processes that read and chunk files (0: threads; default: "
                  "one per core beyond two, at least two).")
    @click.option("--ray-address", metavar="ADDRESS",
                  help="Ray cluster to join, e.g. auto or ray://head:10001 (default: a local Ray).")
    @click.option("--encoders", type=int, metavar="N", help="Ray encoder actors (default: one per GPU).")
    @click.option("--writers", type=int, metavar="N",
                  help="Ray write actors, when they write to a server store (default: 2).")
    @output_options
    def command(paths: tuple[Path, ...], **options: Any) -> None:
        from m3ingest.ingest import ingest
        from m3ingest.scheduler import stop_on_signals

        _setup(options)
        report, as_json, quiet = options.pop("report"), options.pop("as_json"), options.pop("quiet")
        delete, wait, wait_timeout = options.pop("delete"), options.pop("wait"), options.pop("wait_timeout")
        options["include"] = list(options["include"]) or None
        options["exclude"] = list(options["exclude"]) or None
        config = _config(options)
        stop = threading.Event()
        with stop_on_signals(stop):
            result = ingest(
                list(paths), config, delete=delete, progress=not quiet and not as_json, stop=stop,
                wait=wait, wait_timeout=wait_timeout,
            )
        data = result.to_dict()
        _write_report(report, data)
        _emit(data, as_json, result.lines, quiet)
        sys.exit(int(result.exit_code))


_ingest_command("ingest", False, "Ingest files and folders: new and changed files are encoded, unchanged ones skipped.")
_ingest_command("sync", True, "Like ingest, and delete the chunks of files that are no longer there.")


@app.command("search")
@click.argument("query")
@click.option("-k", "--k", "k", type=click.IntRange(min=1), metavar="N", help="Number of results.")
@click.option("--mode", type=click.Choice(_MODES), help="How to search (default: hybrid).")
@click.option("--filter", "filter_", metavar="JSON", help='Metadata filter, e.g. {"source": "a.md"}.')
@store_options
@model_options
@output_options
def search_command(query: str, k: int | None, mode: str | None, filter_: str | None, **options: Any) -> None:
    """Search the collection."""
    from m3ingest.api import search
    from m3ingest.connectors.filters import parse

    _setup(options)
    as_json, quiet = options.pop("as_json"), options.pop("quiet")
    try:
        where = json.loads(filter_) if filter_ else None
    except json.JSONDecodeError as e:
        _fail(f"--filter is not valid JSON: {e}", ExitCode.CONFIG_ERROR)
    except RecursionError:
        _fail("--filter is nested too deeply to read", ExitCode.CONFIG_ERROR)
    if where is not None:
        try:
            parse(where)
        except ValueError as e:
            _fail(f"--filter: {e}", ExitCode.CONFIG_ERROR)
    config = _config(options)
    results = search(query, config, k=k, mode=mode, filter=where)
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
@store_options
@model_options
@output_options
def stats_command(**options: Any) -> None:
    """What the records and the store hold for the collection (creates nothing)."""
    from m3ingest.api import stats

    _setup(options)
    as_json, quiet = options.pop("as_json"), options.pop("quiet")
    data = stats(_config(options))
    _emit(data, as_json, lambda: [f"{k}: {v}" for k, v in data.items()], quiet)


def _confirm(question: str) -> bool:
    """The user's yes or no; a ConfigError when nobody can answer (no terminal on stdin)."""
    try:
        return click.confirm(question)
    except click.Abort:
        raise ConfigError(f"no answer to {question!r} (no terminal on stdin?): pass --yes to confirm") from None


@app.command("drop")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@store_options
@model_options
@output_options
def drop_command(yes: bool, **options: Any) -> None:
    """Delete the collection and its records (an alias: with every version behind it)."""
    from m3ingest.api import drop

    _setup(options)
    as_json, quiet = options.pop("as_json"), options.pop("quiet")
    config = _config(options)
    if not yes and not _confirm("Delete the collection and all its chunks?"):
        sys.exit(int(ExitCode.OK))
    data = drop(config)

    def lines() -> list[str]:
        if not data["dropped"]:
            return [f"no collection {data['collection']}"]
        versions = f" and its versions {', '.join(data['versions'])}" if data["versions"] else ""
        return [f"dropped {data['collection']}{versions}"]

    _emit(data, as_json, lines, quiet)


@app.command("verify")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="[PATH...]")
@click.option("--repair", is_flag=True,
              help="Finish crashed runs, delete orphan chunks, re-encode missing ones from PATH...")
@store_options
@model_options
@lock_options
@output_options
def verify_command(paths: tuple[Path, ...], repair: bool, **options: Any) -> None:
    """Compare the records with the chunks the store holds; exit 5 on drift."""
    from m3ingest.repair import verify

    _setup(options)
    as_json, quiet = options.pop("as_json"), options.pop("quiet")
    wait, wait_timeout = options.pop("wait"), options.pop("wait_timeout")
    if paths and not repair:
        _fail("PATH... is only used with --repair (to re-encode missing chunks)", ExitCode.CONFIG_ERROR)
    result = verify(_config(options), repair=repair, paths=paths, wait=wait, wait_timeout=wait_timeout)
    _emit(result.to_dict(), as_json, result.lines, quiet)
    sys.exit(int(ExitCode.OK if result.clean else ExitCode.DRIFT))


@app.command("rebuild")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="PATH...")
@click.option("--keep", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Versions that remain, the live one included.")
@click.option("--allow-failures", is_flag=True, help="Switch even when some files failed.")
@store_options
@model_options
@chunking_options
@lock_options
@_report_option
@output_options
def rebuild_command(paths: tuple[Path, ...], keep: int, allow_failures: bool, **options: Any) -> None:
    """Build a new version of the collection, check it, and move the alias to it."""
    from m3ingest.scheduler import stop_on_signals
    from m3ingest.versions import RebuildError, rebuild

    _setup(options)
    report, as_json, quiet = options.pop("report"), options.pop("as_json"), options.pop("quiet")
    wait, wait_timeout = options.pop("wait"), options.pop("wait_timeout")
    config = _config(options)
    stop = threading.Event()
    with stop_on_signals(stop):
        try:
            result = rebuild(
                list(paths), config, keep=keep, allow_failures=allow_failures, wait=wait,
                wait_timeout=wait_timeout, progress=not quiet and not as_json, stop=stop,
            )
        except RebuildError as e:
            _fail(f"{e}; the alias was not moved", e.exit_code)
    data = result.summary()
    _write_report(report, data)
    _emit(
        data,
        as_json,
        lambda: [f"{result.alias} -> {result.collection} ({result.chunks} chunks)"]
        + [f"dropped {name}" for name in result.dropped],
        quiet,
    )
    failed = getattr(result.build, "files_failed", 0)
    sys.exit(int(ExitCode.FILES_FAILED if failed else ExitCode.OK))


@app.command("schedule")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="PATH...")
@click.option("--cron", required=True, metavar="EXPR", help='When to run, in cron syntax, e.g. "0 3 * * *".')
@click.option("--run-now", is_flag=True, help="Also run once right away.")
@store_options
@model_options
@_report_option
@click.option("--verbose", "-v", count=True, help="More log lines (-vv: DEBUG).")
@click.option("--log-level", metavar="LEVEL", default="INFO", show_default=True,
              help="DEBUG, INFO, WARNING or ERROR.")
def schedule_command(paths: tuple[Path, ...], cron: str, run_now: bool, **options: Any) -> None:
    """Run sync on a cron schedule until SIGTERM or Ctrl-C (a run stops between batches)."""
    from m3ingest.scheduler import parse_cron, schedule

    options["quiet"] = True
    _setup(options)
    del options["quiet"]
    report = options.pop("report")
    parse_cron(cron)
    schedule(list(paths), _config(options), cron=cron, run_now=run_now, report=report)


def main() -> None:
    """Entry point of the ``m3ingest`` command."""
    app(prog_name="m3ingest")


if __name__ == "__main__":
    main()
