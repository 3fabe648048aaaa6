"""Timing and the machine: repeated wall-clock measurements, samplers, the matmul peak.

Every benchmark times with :func:`measure`: ``warmup`` untimed calls, then ``repeats`` timed
ones, with queued CUDA work waited for after each call, so a figure is the median wall time of
finished work. :func:`machine_info` and :func:`matmul_peak` describe the machine a result was
measured on; :class:`PeriodicSampler` reads a figure in a thread while code runs (resident
memory here, GPU utilisation in :mod:`cascadeseg.bench.gpu`).
"""

from __future__ import annotations

import functools
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cascadeseg import __version__
from cascadeseg.runtime import cpu_bf16_is_fast


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work of ``device`` (a CPU: nothing to wait for); ``None``: of the
    current CUDA device, where there is one."""
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Wall times of the timed calls of :func:`measure` and what the last one returned.

    Attributes:
        times: seconds of each timed call, in call order.
        value: the return value of the last timed call.
    """

    times: list[float]
    value: Any

    @property
    def median(self) -> float:
        """Median seconds of the timed calls."""
        return statistics.median(self.times)

    def summary(self) -> dict[str, float]:
        """``{"median_s", "min_s", "max_s"}`` in seconds."""
        return {"median_s": self.median, "min_s": min(self.times), "max_s": max(self.times)}


def measure(
    fn: Callable[[], Any],
    *,
    repeats: int = 3,
    warmup: int = 1,
    device: torch.device | str | None = None,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``max(1, repeats)`` timed ones.

    ``device`` is whose queued CUDA work is waited for before the clock stops (see
    :func:`synchronize`; ``None``: the current CUDA device when CUDA is available).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    value: Any = None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        value = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(times, value)


def timed(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Median, min and max wall time of ``fn()`` in seconds after ``warmup`` untimed calls."""
    return measure(fn, repeats=repeats, warmup=warmup).summary()


def free_memory(device: str) -> None:
    """Collect garbage and, on CUDA, return cached blocks (between two measurements)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# samplers


class PeriodicSampler:
    """Calls ``read()`` every ``interval`` seconds in a thread while the ``with`` block runs.

    ``samples`` holds the readings of the last block (``None`` readings are skipped); an
    inactive sampler (``active=False``) starts no thread and takes no samples.
    """

    def __init__(
        self, read: Callable[[], float | None], interval: float, *, active: bool = True
    ) -> None:
        self.read = read
        self.interval = interval
        self.active = active
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> PeriodicSampler:
        self.samples.clear()
        if self.active:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def resident_bytes() -> int:
    """Resident set size of this process in bytes (``/proc/self/statm``; elsewhere the
    lifetime maximum from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096)
    except OSError:
        import resource  # Unix only: the fallback where /proc is missing

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class RssSampler(PeriodicSampler):
    """Peak resident set size of this process while the ``with`` block runs (every 5 ms).

    Attributes (after the block): ``baseline`` (bytes on entry) and ``peak`` (bytes, the
    largest of the entry, exit and sampled readings).
    """

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(resident_bytes, interval)
        self.baseline = 0
        self.peak = 0

    def __enter__(self) -> RssSampler:
        self.baseline = resident_bytes()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.peak = int(max([self.baseline, *self.samples, resident_bytes()]))


# --------------------------------------------------------------------------------------------
# the machine


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, threads torch uses, torch version and GPU (if any)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cascadeseg": __version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "cpu_native_bf16": cpu_bf16_is_fast(),
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def matmul_gflops(
    device: torch.device | str,
    dtype: torch.dtype,
    side: int,
    *,
    repeats: int = 5,
    warmup: int = 1,
) -> float:
    """GFLOP/s of a ``side x side`` matmul of ``dtype`` on ``device`` (median of ``repeats``)."""
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    product = functools.partial(torch.matmul, a, b)
    seconds = measure(product, repeats=repeats, warmup=warmup, device=device).median
    return 2 * side**3 / seconds / 1e9


def matmul_peak(device: str = "cpu", *, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured GFLOP/s of a square matmul: the machine's practical peak, per precision.

    Keys ``matmul_fp32_gflops`` and ``matmul_bf16_gflops``, plus ``matmul_tf32_gflops`` on CUDA
    (cuDNN runs fp32 convolutions in TF32 by default, so fp32 networks are compared with it).
    On CUDA the size is 8192 (smaller products do not fill an H100). A CPU without native bf16
    kernels (no AVX-512 BF16/AMX) computes bf16 products ~15x slower than fp32 through reference
    kernels: its bf16 peak is measured at 512 so that the measurement takes seconds.
    """
    n = size if device == "cpu" else 8192
    slow_bf16 = device == "cpu" and not cpu_bf16_is_fast()
    cases: list[tuple[str, torch.dtype, int]] = [
        ("fp32", torch.float32, n),
        ("bf16", torch.bfloat16, min(n, 512) if slow_bf16 else n),
    ]
    if device != "cpu":
        cases.append(("tf32", torch.float32, n))
    out: dict[str, float] = {}
    for name, dtype, side in cases:
        previous = torch.backends.cuda.matmul.allow_tf32
        if device != "cpu":  # fp32 means true fp32 unless TF32 is measured
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        try:
            out[f"matmul_{name}_gflops"] = matmul_gflops(device, dtype, side, repeats=repeats)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    return out
