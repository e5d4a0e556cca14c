"""Which devices and which floating-point precision the encoder runs on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from m3ingest.errors import ConfigError

logger = logging.getLogger("m3ingest.encoder")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU flags that mean bf16 matrix products run in hardware rather than being emulated.
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_DEVICE_HELP = "the --device option, M3INGEST_MODEL__DEVICE or model.device in the configuration"


def resolve_devices(device: str | Sequence[str] | None) -> list[torch.device]:
    """The devices to encode on: CUDA if available else CPU, one name, or a list of names."""
    if device is None:
        return [torch.device("cuda" if torch.cuda.is_available() else "cpu")]
    names = [device] if isinstance(device, str | torch.device) else list(device)
    if not names:
        raise ConfigError(
            f"device list is empty; pass None, 'cpu', 'cuda', 'cuda:1' or a list of them ({_DEVICE_HELP})"
        )
    devices = []
    for name in names:
        try:
            devices.append(torch.device(name))
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device {name!r} is not a device: use cpu, cuda or cuda:N ({_DEVICE_HELP})") from exc
    for d in devices:
        if d.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device {str(d)!r} asked for, but torch sees no CUDA GPU: use cpu, or leave the device unset "
                f"to take a GPU when there is one ({_DEVICE_HELP})"
            )
        if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {str(d)!r} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s) ({_DEVICE_HELP})"
            )
    return devices


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    if any(f in flags for f in _NATIVE_BF16_FLAGS):
        return True
    probe = getattr(getattr(torch._C, "_cpu", None), "_is_avx512_bf16_supported", None)
    return bool(probe()) if probe is not None else False


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The torch dtype for ``dtype`` ("auto", "float32", "bfloat16", "float16") on ``device``.

    "auto" is fp16 on CUDA (the reference implementation's GPU precision, and much closer to
    fp32 than bf16), bf16 on CPUs with native bf16, and fp32 elsewhere.
    """
    if isinstance(dtype, torch.dtype):
        chosen = dtype
    elif dtype == "auto":
        if device.type == "cuda":
            chosen = torch.float16
        elif device.type == "cpu" and cpu_has_native_bf16():
            chosen = torch.bfloat16
        else:
            chosen = torch.float32
    elif dtype in DTYPES:
        chosen = DTYPES[dtype]
    else:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    if chosen not in DTYPES.values():
        raise ValueError(f"unsupported dtype {chosen}; use float32, bfloat16 or float16")
    return chosen


def overflow_fallback_dtype(device: torch.device) -> torch.dtype:
    """The dtype a float16 batch with non-finite outputs is computed again in: fp16's speed class
    with fp32's range (bf16) where the device supports it, else fp32."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float32
    return torch.bfloat16
