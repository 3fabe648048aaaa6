"""Device and precision choices made once, from what the hardware really does fast.

``precision: auto`` (the default of the CPU recipes) resolves to bf16 autocast where bf16 is fast
(CUDA GPUs with bf16 support; CPUs whose oneDNN build reports native bf16: AMX or AVX512-BF16) and
to fp32 elsewhere. Measured on an AVX2-only CPU (docs/performance.md), a bf16 3D convolution ran
13x (forward + backward, 16 channels at 48^3) to several hundred times slower than fp32, because
PyTorch falls back to reference kernels there; so bf16 is never chosen blindly on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from functools import cache
from typing import Any

import torch

from cascadeseg.config import PRECISIONS
from cascadeseg.errors import ConfigError


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; or the named device.

    Raises:
        ConfigError: ``cuda`` asked for without a CUDA device, or an unknown name.
    """
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
        index = int(device.split(":", 1)[1]) if ":" in device else local_rank
        return torch.device("cuda", index)
    raise ConfigError(f"device {device!r}: expected auto, cpu or cuda[:N]")


def tune_device(device: torch.device, *, autotune: bool = True) -> None:
    """Settings for fixed-shape 3D work on ``device``: cuDNN autotuning on CUDA.

    With ``torch.backends.cudnn.benchmark`` cuDNN times its convolution algorithms once per
    input shape and keeps the fastest; training crops and a case's whole-volume passes repeat
    one shape, so the search pays for itself after a few calls (nnU-Net does the same). No
    effect on the CPU.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = autotune


@cache
def cpu_bf16_is_fast() -> bool:
    """Whether this CPU runs bf16 convolutions natively (oneDNN with AMX or AVX512-BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private op: fall back to the ISA level
        return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA with bf16 support; see above for CPUs)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_bf16_is_fast()


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Turn ``auto`` into ``bf16`` or ``fp32`` for ``device``; check the other names.

    An explicit ``bf16`` is kept (the user asked for it); see :func:`effective_precision` for the
    inference policy that falls back to fp32 where bf16 would be slow.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def effective_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """The precision inference runs and a note on why it differs from the request (or ``""``).

    ``bf16`` and ``auto`` become fp32 where the device has no native bf16: inference never gets
    slower because of a precision flag.
    """
    device = torch.device(device)
    if precision in ("auto", "fp32"):
        return resolve_precision(precision, device), ""
    if precision != "bf16":
        raise ConfigError(f"inference precision {precision!r}: choose auto, fp32 or bf16")
    if native_bf16(device):
        return "bf16", ""
    where = "this GPU" if device.type == "cuda" else "this CPU (no AVX512-BF16/AMX)"
    return "fp32", f"bf16 is not native on {where}: fp32 used"


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


def to_float32(obj: Any) -> Any:
    """Floating tensors inside ``obj`` (tensor, tuple/NamedTuple, list, dict, dataclass) as float32.

    Model outputs come out of :func:`autocast` in bf16/fp16; losses and probabilities are
    computed from them in float32.
    """
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: to_float32(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_float32(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float32(v) for v in obj)
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    return obj


def meminfo_available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux), or ``None`` where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
