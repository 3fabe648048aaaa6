"""Device and precision choices made once, from what the hardware really does fast.

``precision: auto`` (the default of the CPU recipes and of ``predict``) resolves to bf16 autocast
where bf16 is fast (CUDA GPUs with bf16 support; CPUs whose oneDNN build reports native bf16: AMX
or AVX512-BF16) and to fp32 elsewhere. Measured on an AVX2-only CPU (docs/performance.md), a
bf16 3D convolution ran 100-180x *slower* than fp32 because PyTorch falls back to a reference
kernel there, so bf16 is never chosen blindly on a CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cache

import torch

from cascadeseg.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but no CUDA device is available")
    return torch.device(device)


@cache
def cpu_bf16_is_fast() -> bool:
    """Whether this CPU runs bf16 convolutions natively (oneDNN with AMX or AVX512-BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Turn ``auto`` into ``bf16`` or ``fp32`` for ``device``; check the other names."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_is_fast() else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Autocast context for a resolved precision (``fp32``: no autocast)."""
    device = torch.device(device)
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
