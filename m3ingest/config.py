"""Configuration: one schema serves the ingest job, the CLI and the apps that search its collections.

Sources, lowest precedence first: the defaults below, a TOML file, ``M3INGEST_<SECTION>__<KEY>``
environment variables, then overrides (CLI options and keyword arguments, named by ``OPTIONS`` or
given by section). ``${VAR}`` anywhere in a string of the file is replaced by that environment
variable, so secrets stay out of the file; every secret setting is masked in all output.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from m3ingest.errors import ConfigError
from m3ingest.sources.document import DEFAULT_LIMITS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "ChunkingConfig",
    "Config",
    "ConfigError",
    "ExecutorConfig",
    "ModelConfig",
    "RecordsConfig",
    "SearchConfig",
    "SourcesConfig",
    "StoreConfig",
    "load_config",
    "resolve_config",
    "secret",
]

ENV_PREFIX = "M3INGEST_"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Collection names both engines accept (Milvus is the stricter), leaving room for ``__v<N>``.
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
#: The fewest tokens a chunk may hold (the chunker's own bound, checked here once).
MIN_CHUNK_SIZE = 8

#: Flat names (CLI options and keyword arguments of the library functions) -> the setting each sets.
OPTIONS: dict[str, str] = {
    "backend": "store.backend",
    "uri": "store.uri",
    "collection": "store.collection",
    "colbert": "store.colbert",
    "model": "model.name",
    "revision": "model.revision",
    "device": "model.device",
    "dtype": "model.dtype",
    "batch_tokens": "model.batch_tokens",
    "chunk_size": "chunking.chunk_size",
    "overlap": "chunking.overlap",
    "include": "sources.include",
    "exclude": "sources.exclude",
    "metadata": "sources.metadata",
    "records_path": "records.path",
    "executor": "executor.kind",
    "workers": "executor.workers",
    "ray_address": "executor.ray_address",
    "encoders": "executor.encoders",
    "writers": "executor.writers",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StoreConfig(_Section):
    """Where chunks are written and searched."""

    backend: Literal["milvus", "qdrant"] = "milvus"
    #: A Milvus Lite file, a Qdrant local folder or ":memory:", or an http(s):// server URI.
    uri: str = "./m3ingest.db"
    #: The collection, or the alias retrievers use (see ``m3ingest rebuild``).
    collection: str = "m3ingest"
    token: SecretStr | None = None
    user: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    #: Store ColBERT vectors too (for the M3 re-ranking without re-encoding candidates).
    colbert: bool = False
    timeout: float = Field(30.0, gt=0)

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, v: str) -> str:
        if not _COLLECTION.match(v):
            raise ValueError(
                f"{v!r} is not a collection name: use letters, digits and '_' (not first a digit), "
                "at most 200 characters"
            )
        return v


class ModelConfig(_Section):
    """The BGE-M3 checkpoint and how it runs."""

    name: str = "BAAI/bge-m3"
    #: Hub branch, tag or commit of ``name`` (default: the hub's main branch).
    revision: str | None = None
    device: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_length: int = Field(8192, ge=8, le=8192)
    #: Tokens per encoder batch (padding included); batches shrink on CUDA out-of-memory.
    batch_tokens: int = Field(16384, ge=64)


class ChunkingConfig(_Section):
    """Token-aware chunking with the M3 tokenizer."""

    chunk_size: int = Field(512, ge=MIN_CHUNK_SIZE, le=8192)
    overlap: int = Field(64, ge=0)

    @field_validator("overlap")
    @classmethod
    def _overlap_below_size(cls, v: int, info: Any) -> int:
        size = info.data.get("chunk_size", 512)
        if v >= size:
            raise ValueError(f"overlap ({v}) must be smaller than chunk_size ({size})")
        return v


class SourcesConfig(_Section):
    """Which files of the ingest paths are read, and how much of one file may be."""

    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    follow_symlinks: bool = True
    #: Follow links whose target lies outside the ingest root (off: they are reported, skipped).
    follow_links_outside_root: bool = False
    #: Largest file read, in bytes (for archives such as .docx: also their inflated size).
    max_file_bytes: int = Field(DEFAULT_LIMITS.max_file_bytes, ge=1)
    #: Most characters of text one file may give after extraction.
    max_text_chars: int = Field(DEFAULT_LIMITS.max_text_chars, ge=1)
    #: Extra metadata stored with every chunk of this job.
    metadata: dict[str, Any] = Field(default_factory=dict)


class RecordsConfig(_Section):
    """The SQLite record store that makes re-runs incremental."""

    #: Default: next to an embedded database (``<uri>.records/``), else ``./.m3ingest/``.
    path: str | None = None


class SearchConfig(_Section):
    """Defaults for ``m3ingest search`` and the retrievers."""

    mode: Literal["dense", "sparse", "hybrid", "m3"] = "hybrid"
    k: int = Field(10, ge=1)
    fusion: Literal["rrf", "weighted", "dbsf"] = "rrf"
    rrf_k: int = Field(60, ge=1)
    #: (dense, sparse) weights for weighted fusion.
    weights: tuple[float, float] = (0.5, 0.5)
    #: (dense, lexical, colbert) weights of the paper's M3 re-ranking.
    m3_weights: tuple[float, float, float] = (0.4, 0.2, 0.4)
    #: Candidates taken from each of the dense and sparse searches before fusion or re-ranking.
    candidates: int = Field(100, ge=1)
    filter: dict[str, Any] | None = None


class ExecutorConfig(_Section):
    """Where an ingest run's stages execute: on this machine, or on Ray (docs/distributed.md)."""

    kind: Literal["local", "ray"] = "local"
    #: Local executor: processes that read, extract and chunk files (0: threads); default: one per
    #: core beyond the two that encode and write, at least two from two cores on, threads on one.
    workers: int | None = Field(None, ge=0)
    #: Ray cluster to join ("auto", "ray://head:10001"); default: start a local Ray runtime.
    ray_address: str | None = None
    #: Encoder actors, each holding one model; default: one per GPU of the cluster, else 1.
    encoders: int | None = Field(None, ge=1)
    #: GPUs per encoder actor; default: 1 when the cluster has GPUs, else 0.
    encoder_gpus: float | None = Field(None, ge=0)
    encoder_cpus: float = Field(1.0, gt=0)
    #: Parallel read/extract/chunk tasks; default: as many as Ray schedules.
    prepare_tasks: int | None = Field(None, ge=1)
    #: Files per encoder call and per write (their chunks are batched by tokens inside the call).
    batch_files: int = Field(16, ge=1)
    #: Who upserts the encoded chunks: "workers" (a write stage of Ray actors; needs a server
    #: store), "driver" (this process), or "auto": workers for a server store, else the driver.
    write: Literal["auto", "workers", "driver"] = "auto"
    #: Write actors when workers write.
    writers: int = Field(2, ge=1)
    #: Restarts of a dead encoder actor and retries of a failed task; default: Ray Data's
    #: (actors restarted without limit, tasks retried a few times).
    retries: int | None = Field(None, ge=0)


@dataclass(frozen=True)
class _Sources:
    """What one ``load_config`` call reads besides its overrides."""

    path: Path | None
    env: Mapping[str, str]


_SOURCES: ContextVar[_Sources | None] = ContextVar("m3ingest_config_sources", default=None)


class Config(BaseSettings):
    """The whole configuration of a job or an app.

    ``Config()`` is the defaults with the ``M3INGEST_*`` environment applied; ``load_config`` adds a
    TOML file and overrides.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
        nested_model_default_partial_update=True,
    )

    store: StoreConfig = Field(default_factory=StoreConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    records: RecordsConfig = Field(default_factory=RecordsConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = _SOURCES.get()
        if sources is None:
            return (init_settings, env_settings)
        env = _Environment(settings_cls, sources.env)
        if sources.path is None:
            return (init_settings, env)
        return (init_settings, env, _TomlFile(settings_cls, sources.path, sources.env))


class _Environment(EnvSettingsSource):
    """``M3INGEST_<SECTION>__<KEY>`` variables, read from a given mapping (``os.environ`` by default)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._env.items() if k.upper().startswith(ENV_PREFIX)}


class _TomlFile(PydanticBaseSettingsSource):
    """A TOML file, with ``${VAR}`` in its strings taken from the environment."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path, env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._data = _expand(_read_toml(path), path.name, env)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"configuration file {path} is a folder; give a TOML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"configuration file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e.strerror or e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def _expand(value: Any, where: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                raise ConfigError(f"{where} refers to ${{{name}}}, but the environment has no {name}")
            return env[name]

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, where, env) for v in value]
    return value


def _without_none(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            value = _without_none(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


@contextmanager
def _reading(path: Path | None, env: Mapping[str, str]) -> Iterator[None]:
    token = _SOURCES.set(_Sources(path, env))
    try:
        yield
    finally:
        _SOURCES.reset(token)


def _invalid(e: ValidationError, source: str) -> ConfigError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
    )
    return ConfigError(f"invalid setting in {source}: {problems}")


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read a TOML file (optional), apply the environment and ``overrides``, validate.

    ``overrides`` is ``{"store": {"uri": ...}, ...}``; ``None`` values are ignored, so CLI options
    left unset do not mask the file. Secret settings are registered for masking.
    """
    file = Path(path) if path is not None else None
    source = str(file) if file is not None else "the configuration"
    with _reading(file, os.environ if env is None else env):
        try:
            config = Config(**_without_none(overrides or {}))
        except ValidationError as e:
            raise _invalid(e, source) from None
    _register_secrets(config)
    return config


def _nested(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in Config.model_fields and isinstance(value, Mapping):
            nested.setdefault(key, {}).update(value)
        elif key in OPTIONS:
            section, name = OPTIONS[key].split(".")
            nested.setdefault(section, {})[name] = value
        else:
            raise ConfigError(f"unknown setting {key!r}; use one of {', '.join(sorted(OPTIONS))}")
    return nested


def resolve_config(
    config: Config | str | os.PathLike[str] | None = None, **overrides: Any
) -> Config:
    """The configuration a call runs with: file (or ``Config``) < environment < ``overrides``.

    ``overrides`` are flat names of ``OPTIONS`` (``chunk_size=256``) or whole sections
    (``store={"uri": ...}``); None values are ignored.
    """
    nested = _nested(overrides)
    if not isinstance(config, Config):
        return load_config(config, overrides=nested)
    if nested:
        data = config.model_dump()
        for section, values in nested.items():
            data[section].update(values)
        try:
            config = Config.model_validate(data)
        except ValidationError as e:
            raise _invalid(e, "the overrides") from None
    _register_secrets(config)
    return config


def _register_secrets(config: Config) -> None:
    from m3ingest.redact import register_config

    register_config(config)


def secret(value: SecretStr | None) -> str | None:
    """The plain value of a secret setting, for handing to a client (never to a log)."""
    return value.get_secret_value() if value is not None else None
