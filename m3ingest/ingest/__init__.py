"""Ingestion: ``ingest`` and ``sync``, and the stages they run.

walk -> plan (``plan.py``: read, extract, chunk, classify) -> encode (``encoding.py``) -> write
(``writer.py``: store, then records) -> summary (``summary.py``); an executor (``local.py`` or
``ray.py``, behind ``executor.py``) runs the stages. See docs/architecture.md.

This module stays light: importing it loads neither torch nor a database client.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3ingest.errors import ConfigError
from m3ingest.redact import scrubbed

if TYPE_CHECKING:
    from m3ingest.config import Config
    from m3ingest.connectors import VectorStore
    from m3ingest.encoder import M3Encoder
    from m3ingest.ingest.summary import Summary

__all__ = ["ingest", "sync"]

Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def roots_of(paths: Paths) -> list[Path]:
    """The files and folders to ingest; ``ConfigError`` names one that does not exist."""
    roots = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not roots:
        raise ConfigError("no path given; give the files and folders to ingest")
    for root in roots:
        if not root.exists() and not root.is_symlink():
            raise ConfigError(f"{root} does not exist; give the files and folders to ingest")
    return roots


@scrubbed
def ingest(
    paths: Paths,
    config: Config | str | os.PathLike[str] | None = None,
    *,
    delete: bool = False,
    progress: bool = False,
    stop: threading.Event | None = None,
    encoder: M3Encoder | None = None,
    store: VectorStore | None = None,
    wait: bool = False,
    wait_timeout: float | None = None,
    **overrides: Any,
) -> Summary:
    """Ingest the files under ``paths`` (files and folders): new and changed files are encoded,
    unchanged ones skipped at the cost of a stat.

    ``delete`` also removes the chunks of files that are no longer there (``sync``). ``encoder``
    and ``store`` reuse objects already open; otherwise the model loads only when a chunk must be
    encoded (first, before anything is written, for a collection that does not exist yet). Files
    that cannot be read are listed in the summary's ``failures`` and keep their stored chunks;
    errors the user can act on raise ``M3IngestError`` subclasses (a store that fails:
    ``StoreError``; other settings than the collection's: ``SettingsMismatchError``; another run
    holding the collection: ``CollectionLocked``, at once or, with ``wait``, after
    ``wait_timeout`` seconds). Setting ``stop`` ends the run between batches.
    """
    from m3ingest.config import resolve_config
    from m3ingest.context import CollectionContext
    from m3ingest.ingest.encoding import LazyEncoder
    from m3ingest.ingest.executor import executor_for
    from m3ingest.ingest.writer import Run
    from m3ingest.records import settings_of

    cfg = resolve_config(config, **overrides)
    roots = roots_of(paths)
    collection = CollectionContext.from_config(cfg)
    on_ray = cfg.executor.kind == "ray"
    if encoder is not None:
        model = LazyEncoder.of(encoder)
    else:
        # The Ray driver encodes only a chunk its store lost (rare), on its own CPU.
        model = LazyEncoder(cfg.model, device="cpu" if on_ray else None, longest=cfg.chunking.chunk_size + 2)
    if not collection.has_local_state():
        # A new collection: the model must load before anything is made on disk, so a model
        # that cannot be had leaves nothing behind to tie the collection to it.
        model.load(weights=not on_ray)
    settings = settings_of(cfg, model.fingerprint)
    stop = stop or threading.Event()
    with ExitStack() as stack:
        stack.enter_context(collection.lock(wait=wait, timeout=wait_timeout, stop=stop))
        if store is None:
            store = stack.enter_context(collection.open_store())
        collection = collection.resolved(store)
        records = stack.enter_context(collection.open_records())
        records.check_settings(settings, cfg.store.collection)
        workers_upsert = False
        if on_ray:
            from m3ingest.ingest.ray import workers_write

            workers_upsert = workers_write(cfg)
        run = Run(
            collection, store, records, model, settings,
            progress=progress, stop=stop, workers_upsert=workers_upsert,
        )
        with run:
            return executor_for(run).run(roots, delete)


def sync(paths: Paths, config: Config | str | os.PathLike[str] | None = None, **kwargs: Any) -> Summary:
    """``ingest`` that also deletes the chunks of files that disappeared from ``paths``."""
    kwargs["delete"] = True
    return ingest(paths, config, **kwargs)
