"""The library functions behind the commands: ``ingest``, ``sync``, ``search``, ``stats``, ``drop``.

Each takes ``config`` (a ``Config``, a TOML file path, or None for defaults plus environment)
and keyword overrides, either flat (``uri="x.db"``, ``model="BAAI/bge-m3"``, ``chunk_size=256``,
see ``OVERRIDES``) or by section (``store={"uri": ...}``); overrides win over the file and the
environment.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3ingest.config import Config, ConfigError, load_config
from m3ingest.locking import collection_lock
from m3ingest.pipeline import Pipeline, Summary
from m3ingest.records import Records, default_path, settings_of
from m3ingest.redact import register_config, scrubbed

if TYPE_CHECKING:
    from m3ingest.connectors import VectorStore
    from m3ingest.encoder import M3Encoder
    from m3ingest.retrievers.searcher import SearchResult

#: Flat keyword overrides and the setting each one sets.
OVERRIDES: dict[str, tuple[str, str]] = {
    "backend": ("store", "backend"),
    "uri": ("store", "uri"),
    "collection": ("store", "collection"),
    "colbert": ("store", "colbert"),
    "model": ("model", "name"),
    "device": ("model", "device"),
    "dtype": ("model", "dtype"),
    "batch_tokens": ("model", "batch_tokens"),
    "chunk_size": ("chunking", "chunk_size"),
    "overlap": ("chunking", "overlap"),
    "include": ("sources", "include"),
    "exclude": ("sources", "exclude"),
    "metadata": ("sources", "metadata"),
    "records_path": ("records", "path"),
    "executor": ("executor", "kind"),
    "ray_address": ("executor", "ray_address"),
    "encoders": ("executor", "encoders"),
    "writers": ("executor", "writers"),
}


def resolve_config(
    config: Config | str | os.PathLike[str] | None = None, **overrides: Any
) -> Config:
    """The configuration a call runs with: file (or ``Config``) < environment < ``overrides``."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in Config.model_fields and isinstance(value, Mapping):
            nested.setdefault(key, {}).update(value)
        elif key in OVERRIDES:
            section, name = OVERRIDES[key]
            nested.setdefault(section, {})[name] = value
        else:
            raise ConfigError(f"unknown setting {key!r}; use one of {', '.join(sorted(OVERRIDES))}")
    if isinstance(config, Config):
        if not nested:
            return config
        data = config.model_dump()
        for section, values in nested.items():
            data[section].update(values)
        try:
            return Config.model_validate(data)
        except ValueError as e:
            raise ConfigError(f"invalid setting: {e}") from None
    return load_config(config, overrides=nested)


def _encoder(config: Config) -> "M3Encoder":
    from m3ingest.encoder import M3Encoder

    m = config.model
    return M3Encoder(m.name, device=m.device, dtype=m.dtype, batch_tokens=m.batch_tokens)


def _store(config: Config) -> "VectorStore":
    from m3ingest.connectors import store_from_config

    return store_from_config(config.store)


def live_records_path(config: Config, store: "VectorStore") -> Path | str:
    """The records of the collection ``store.collection`` names, or points at when an alias.

    Each version built by ``rebuild`` has its own records, so moving the alias is the one step
    that switches both what is searched and what ``sync`` compares against.
    """
    name = config.store.collection
    target = store.resolve_alias(name) or name
    if target == name:
        return default_path(config)
    live = config.store.model_copy(update={"collection": target})
    return default_path(config.model_copy(update={"store": live}))


@scrubbed
def ingest(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    config: Config | str | os.PathLike[str] | None = None,
    *,
    delete: bool = False,
    progress: bool = False,
    stop: threading.Event | None = None,
    encoder: "M3Encoder | None" = None,
    store: "VectorStore | None" = None,
    wait: bool = False,
    wait_timeout: float | None = None,
    **overrides: Any,
) -> Summary:
    """Ingest the files under ``paths``: new and changed files are encoded, unchanged ones skipped.

    ``delete`` also removes the chunks of sources that are no longer there (``sync``). ``encoder``
    and ``store`` reuse objects already open. Files that cannot be read are listed in the
    summary's ``failures``; a store that fails raises ``StoreError``; settings that differ from
    the ones that built the collection raise ``SettingsMismatchError``. Another run holding the
    collection's lock raises ``CollectionLocked``, at once or, with ``wait``, after
    ``wait_timeout`` seconds (None: no limit). Setting ``stop`` ends the run between batches.
    """
    cfg = resolve_config(config, **overrides)
    register_config(cfg)
    roots = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    for root in roots:
        if not Path(root).is_dir():
            raise ConfigError(f"{root} is not a folder; give the folders to ingest")
    stop = stop or threading.Event()
    with ExitStack() as stack:
        stack.enter_context(collection_lock(cfg, wait=wait, timeout=wait_timeout, stop=stop))
        if store is None:
            store = stack.enter_context(_store(cfg))
        records = stack.enter_context(Records(live_records_path(cfg, store)))
        records.check_settings(settings_of(cfg), cfg.store.collection)
        if cfg.executor.kind == "ray":
            from m3ingest.ray_executor import RayPipeline

            ray_run = RayPipeline(cfg, store, records, encoder=encoder, progress=progress, stop=stop)
            return ray_run.run(roots, delete=delete)
        if encoder is None:
            encoder = _encoder(cfg)
        pipeline = Pipeline(cfg, store, encoder, records, progress=progress, stop=stop)
        return pipeline.run(roots, delete=delete)


def sync(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    config: Config | str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Summary:
    """``ingest`` that also deletes the chunks of sources that disappeared from ``paths``."""
    kwargs["delete"] = True
    return ingest(paths, config, **kwargs)


@scrubbed
def search(
    query: str,
    config: Config | str | os.PathLike[str] | None = None,
    *,
    k: int | None = None,
    mode: str | None = None,
    filter: Mapping[str, Any] | None = None,
    encoder: "M3Encoder | None" = None,
    **overrides: Any,
) -> list["SearchResult"]:
    """The ``k`` chunks that best match ``query`` (``mode``: dense, sparse, hybrid or m3)."""
    from m3ingest.retrievers import M3Searcher

    cfg = resolve_config(config, **overrides)
    searcher = M3Searcher.from_config(cfg, encoder=encoder)
    try:
        return searcher.search(query, k=k, mode=mode, filter=filter)
    finally:
        searcher.close()


@scrubbed
def stats(config: Config | str | os.PathLike[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """What the records and the store hold for the configured collection."""
    cfg = resolve_config(config, **overrides)
    with _store(cfg) as store, Records(path := live_records_path(cfg, store)) as records:
        sources, chunks = records.counts()
        exists = store.has_collection(cfg.store.collection)
        return {
            "backend": cfg.store.backend,
            "collection": cfg.store.collection,
            "exists": exists,
            "chunks_in_store": store.count(cfg.store.collection) if exists else 0,
            "sources_recorded": sources,
            "chunks_recorded": chunks,
            "pending_intents": len(records.intents()),
            "records": str(path),
            "built_with": records.meta(),
        }


@scrubbed
def drop(config: Config | str | os.PathLike[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """Delete the configured collection and its records; when it names an alias that ``rebuild``
    made, the alias and every version behind it, with their records. Waits for no run: a run
    holding the collection's lock raises ``CollectionLocked``."""
    from m3ingest.versions import drop_versions

    cfg = resolve_config(config, **overrides)
    name = cfg.store.collection
    with collection_lock(cfg), Records(default_path(cfg)) as records, _store(cfg) as store:
        existed = store.has_collection(name)
        store.drop_collection(name)
        versions = drop_versions(store, cfg)
        records.clear()
    return {"collection": name, "dropped": existed or bool(versions), "versions": versions}
