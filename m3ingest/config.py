"""Configuration: one TOML file serves the ingest job and the apps that search its collections.

Precedence, lowest first: defaults, the TOML file, ``M3INGEST_<SECTION>__<KEY>`` environment
variables, explicit overrides (CLI options, keyword arguments). ``${VAR}`` anywhere in a string
value of the file is replaced by that environment variable, so secrets stay out of the file.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "M3INGEST_"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file, the setting or the variable."""


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
    timeout: float = 30.0


class ModelConfig(_Section):
    """The BGE-M3 checkpoint and how it runs."""

    name: str = "BAAI/bge-m3"
    device: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_length: int = Field(8192, ge=8, le=8192)
    #: Tokens per encoder batch (padding included); batches shrink on CUDA out-of-memory.
    batch_tokens: int = Field(16384, ge=64)


class ChunkingConfig(_Section):
    """Token-aware chunking with the M3 tokenizer."""

    chunk_size: int = Field(512, ge=16, le=8192)
    overlap: int = Field(64, ge=0)

    @field_validator("overlap")
    @classmethod
    def _overlap_below_size(cls, v: int, info: Any) -> int:
        size = info.data.get("chunk_size", 512)
        if v >= size:
            raise ValueError(f"overlap ({v}) must be smaller than chunk_size ({size})")
        return v


class SourcesConfig(_Section):
    """Which files of the ingest folders are read."""

    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    follow_symlinks: bool = True
    #: Extra metadata stored with every chunk of this job.
    metadata: dict[str, Any] = Field(default_factory=dict)


class RecordsConfig(_Section):
    """The SQLite record store that makes re-runs incremental."""

    #: Default: next to an embedded database, else ``./.m3ingest/``; see ``records.default_path``.
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
    """Where an ingest run's stages execute: in this process, or on Ray (docs/distributed.md)."""

    kind: Literal["local", "ray"] = "local"
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


class Config(_Section):
    """The whole configuration of a job or an app."""

    store: StoreConfig = Field(default_factory=StoreConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    records: RecordsConfig = Field(default_factory=RecordsConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)


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


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX) :].lower().partition("__")
        if section in Config.model_fields:
            out.setdefault(section, {})[name] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        elif value is not None:
            merged[key] = value
    return merged


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read a TOML file (optional), apply environment variables and overrides, validate.

    ``overrides`` is ``{"store": {"uri": ...}, ...}``; ``None`` values are ignored, so CLI options
    left unset do not mask the file.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = "the configuration"
    if path is not None:
        file = Path(path)
        source = str(file)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {file} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file} is not valid TOML: {e}") from None
        data = _expand(data, file.name, env)
    data = _merge(data, _env_overrides(env))
    if overrides:
        data = _merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"invalid setting in {source}: {problems}") from None


def secret(value: SecretStr | None) -> str | None:
    """The plain value of a secret setting, for handing to a client (never to a log)."""
    return value.get_secret_value() if value is not None else None
