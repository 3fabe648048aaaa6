"""Speed and memory of one training iteration, for the benchmark suite.

:func:`benchmark_training_step` runs the trainer's own iteration (autocast forward, float32
loss, backward through a GradScaler when fp16, Adam step) on a synthetic batch, after warm-up
iterations, and reports the median time over repeats and the peak memory:
``torch.cuda.max_memory_allocated`` on CUDA, the growth of the resident set size over the
measured iterations on CPU (sampled every 5 ms from ``/proc/self/statm``; the allocator's
high-water mark cannot be reset on CPU, so the resident size is the honest measure there).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cascadeseg.config import LossConfig
from cascadeseg.data.labels import ED, ET, NCR
from cascadeseg.losses import build_loss
from cascadeseg.models import build_model
from cascadeseg.runtime import autocast, resolve_device, resolve_precision, tune_device
from cascadeseg.training.session import to_float32


def synthetic_batch(
    batch: int, size: Sequence[int], *, in_channels: int = 4, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A batch shaped like the datasets' (``image``, ``label``, ``regions``, ``brain_mask``).

    The label is a nested tumour (edema shell, enhancing rim, necrotic core) centred in an
    ellipsoidal brain, so every loss (LWS included) has all its regions.

    Args:
        batch: batch size.
        size: spatial size, 3 values (3D) or 2 (2D), voxels.
    """
    gen = torch.Generator().manual_seed(seed)
    spatial = tuple(int(s) for s in size)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in spatial], indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grids))  # type: ignore[arg-type]
    brain = radius <= 0.9
    label = torch.zeros(spatial, dtype=torch.int64)
    label[radius <= 0.45] = ED
    label[radius <= 0.3] = ET
    label[radius <= 0.18] = NCR
    image = torch.randn((batch, in_channels, *spatial), generator=gen) * brain
    labels = label.expand(batch, *spatial).clone()
    regions = torch.stack([labels > 0, (labels == NCR) | (labels == ET), labels == ET], 1)
    return {
        "image": image,
        "label": labels,
        "regions": regions.float(),
        "brain_mask": brain.expand(batch, *spatial).clone(),
    }


class _RssSampler:
    """Peak resident set size (bytes) of this process while running, sampled in a thread."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:  # not Linux: fall back to the lifetime maximum (kB on Linux/BSD)
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> _RssSampler:
        self.baseline = self.rss()
        self.peak = self.baseline
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def benchmark_training_step(
    name: str,
    size: Sequence[int],
    precision: str = "bf16",
    checkpointing: bool = False,
    batch: int = 1,
    device: str = "auto",
    *,
    model_args: dict[str, Any] | None = None,
    warmup: int = 2,
    repeats: int = 5,
    loss_cfg: LossConfig | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Seconds per training iteration (median) and peak memory of model ``name``.

    Args:
        name: registered model name (``two_stage``, ``unet3d``, ``cunet``, ``unet2d``).
        size: crop size, 3 values for 3D models, 2 for 2D ones (voxels).
        precision: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (reported resolved).
        checkpointing: gradient checkpointing (models that support it).
        batch: batch size.
        device: ``auto``, ``cpu`` or ``cuda``.
        model_args: constructor overrides (e.g. small widths for CPU runs).
        warmup: iterations run before timing (allocator, cuDNN autotuning).
        repeats: timed iterations.
        loss_cfg: loss settings (default :class:`LossConfig`).
        channels_last: model and input in channels-last memory format, as the trainer runs
            them with ``train.channels_last`` (the CPU recipes).

    Returns:
        ``{"model", "size", "batch", "precision", "checkpointing", "device", "params",
        "s_per_iter", "s_per_iter_all", "it_per_s", "peak_memory_mb", "memory_kind"}`` with
        ``s_per_iter`` the median over ``repeats`` and ``memory_kind`` ``cuda_max_allocated``
        or ``cpu_rss_growth``.
    """
    dev = resolve_device(device)
    tune_device(dev)  # as the trainer runs
    precision = resolve_precision(precision, dev)
    args = {**(model_args or {}), **({"checkpointing": True} if checkpointing else {})}
    torch.manual_seed(0)
    model = build_model(name, **args).to(dev).train()
    loss_fn = build_loss(model, loss_cfg or LossConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    in_channels = int(model.in_channels)  # type: ignore[arg-type]
    data = synthetic_batch(batch, size, in_channels=in_channels)
    data = {k: v.to(dev) for k, v in data.items()}
    if channels_last:
        fmt = torch.channels_last_3d if len(size) == 3 else torch.channels_last
        model = model.to(memory_format=fmt)  # type: ignore[call-overload]
        data["image"] = data["image"].contiguous(memory_format=fmt)

    def step() -> None:
        with autocast(precision, dev):
            output = model(data["image"])
        # No aux_weight: the loss's own, CU-Net's weight of epoch 0.
        total, _ = loss_fn(to_float32(output), data)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    times, peak, kind = _time_steps(step, dev, warmup=warmup, repeats=repeats)
    median = statistics.median(times)
    return {
        "model": name,
        "size": [int(s) for s in size],
        "batch": batch,
        "precision": precision,
        "checkpointing": checkpointing,
        "device": str(dev),
        "params": int(sum(p.numel() for p in model.parameters())),
        "s_per_iter": median,
        "s_per_iter_all": times,
        "it_per_s": 1.0 / median if median > 0 else float(np.inf),
        "peak_memory_mb": peak / 2**20,
        "memory_kind": kind,
    }


def _time_steps(
    step: Callable[[], None], dev: torch.device, *, warmup: int, repeats: int
) -> tuple[list[float], float, str]:
    """Run ``step`` ``warmup`` times, then time ``repeats`` runs of it.

    Returns:
        ``(seconds of each timed run, peak memory in bytes, memory kind)``: on CUDA the
        allocator's peak (``cuda_max_allocated``), on CPU the resident-size growth
        (``cpu_rss_growth``).
    """

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    times: list[float] = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        return times, float(torch.cuda.max_memory_allocated(dev)), "cuda_max_allocated"
    with _RssSampler() as sampler:
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return times, float(sampler.peak - sampler.baseline), "cpu_rss_growth"
