"""The training suite: seconds per iteration and peak memory of the training step.

:func:`benchmark_training_step` runs the trainer's own iteration (autocast forward, float32
loss, backward through a GradScaler when fp16, Adam step) on a synthetic batch, after warm-up
iterations, and reports the median time over repeats and the peak memory:
``torch.cuda.max_memory_allocated`` on CUDA, the growth of the resident set size over the
measured iterations on CPU (sampled every 5 ms; the allocator's high-water mark cannot be reset
on CPU, so the resident size is the honest measure there). :func:`training_suite` records the
rows of every network, with and without gradient checkpointing, the demo recipe's own step and
whether one loader worker keeps up with the step.

CPU: the CPU recipes' widths at 128^3 (two_stage, unet3d) and the CU-Net recipe's slices.
CUDA: paper widths, bf16. Targets (issue 4, H100): <= 0.25 s per iteration with bf16, peak
memory <= 8 GB with checkpointing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch

from cascadeseg.bench.data import crop_rate
from cascadeseg.bench.inputs import (
    QUICK_3D,
    cpu_recipe,
    quick_overrides,
    synthetic_batch,
    synthetic_data,
)
from cascadeseg.bench.rows import Suite, add_row, size_text
from cascadeseg.bench.timing import RssSampler, Timing, free_memory, measure, synchronize
from cascadeseg.config import LossConfig
from cascadeseg.losses import build_loss
from cascadeseg.models import SegmentationModule, build_model
from cascadeseg.runtime import (
    autocast,
    native_bf16,
    resolve_device,
    resolve_precision,
    to_float32,
    tune_device,
)

#: What limits a training step's time.
STEP_LIMIT = "compute (forward + backward convolutions)"


def _training_step(
    model: SegmentationModule,
    data: dict[str, torch.Tensor],
    precision: str,
    dev: torch.device,
    loss_cfg: LossConfig,
) -> Callable[[], None]:
    """One trainer iteration of ``model`` on ``data``: forward, float32 loss, backward, Adam."""
    loss_fn = build_loss(model, loss_cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")

    def step() -> None:
        with autocast(precision, dev):
            output = model(data["image"])
        # No aux_weight: the loss's own, CU-Net's weight of epoch 0.
        total, _ = loss_fn(to_float32(output), data)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def _time_steps(
    step: Callable[[], None], dev: torch.device, *, warmup: int, repeats: int
) -> tuple[Timing, float, str]:
    """Timed steps after ``warmup`` ones, their peak memory in bytes, and how it was measured."""
    for _ in range(warmup):
        step()
    synchronize(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        timing = measure(step, repeats=repeats, warmup=0, device=dev)
        return timing, float(torch.cuda.max_memory_allocated(dev)), "cuda_max_allocated"
    with RssSampler() as sampler:
        timing = measure(step, repeats=repeats, warmup=0, device=dev)
    return timing, float(sampler.peak - sampler.baseline), "cpu_rss_growth"


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
    args = dict(model_args or {}, **({"checkpointing": True} if checkpointing else {}))
    torch.manual_seed(0)
    model = build_model(name, **args).to(dev).train()
    data = synthetic_batch(batch, size, in_channels=cast(int, model.in_channels))
    data = {k: v.to(dev) for k, v in data.items()}
    if channels_last:
        fmt = torch.channels_last_3d if len(size) == 3 else torch.channels_last
        model = model.to(memory_format=fmt)  # type: ignore[call-overload]
        data["image"] = data["image"].contiguous(memory_format=fmt)
    step = _training_step(model, data, precision, dev, loss_cfg or LossConfig())
    timing, peak, kind = _time_steps(step, dev, warmup=warmup, repeats=repeats)
    median = timing.median
    return {
        "model": name,
        "size": [int(s) for s in size],
        "batch": batch,
        "precision": precision,
        "checkpointing": checkpointing,
        "device": str(dev),
        "params": int(sum(p.numel() for p in model.parameters())),
        "s_per_iter": median,
        "s_per_iter_all": timing.times,
        "it_per_s": 1.0 / median if median > 0 else float(np.inf),
        "peak_memory_mb": peak / 2**20,
        "memory_kind": kind,
    }


def add_step_rows(
    suite: Suite,
    what: str,
    result: dict[str, Any],
    *,
    time_target: tuple[str, float] | None,
    memory_target: tuple[str, float] | None,
    limited_by: str = STEP_LIMIT,
) -> None:
    """The ``"<what>: time"`` (s/it) and ``"<what>: peak memory"`` (GB) rows of one
    :func:`benchmark_training_step` result."""
    add_row(
        suite,
        f"{what}: time",
        result["s_per_iter"],
        "s/it",
        target=time_target,
        limited_by=limited_by,
        params=result["params"],
    )
    add_row(
        suite,
        f"{what}: peak memory",
        result["peak_memory_mb"] / 1024,
        "GB",
        target=memory_target,
        limited_by="activation memory (stored for backward)",
        memory_kind=result["memory_kind"],
    )


# --------------------------------------------------------------------------------------------
# the suite


def _step_settings(
    name: str, *, quick: bool, on_gpu: bool
) -> tuple[tuple[int, ...], dict[str, Any], int]:
    """Crop size, model overrides and batch of ``name``'s training rows."""
    dims = 2 if name == "cunet" else 3
    if quick:
        return QUICK_3D[:dims], quick_overrides(name, quick), 2 if dims == 2 else 1
    if on_gpu:  # paper widths; 2D: batches of 16 brain-cropped axial slices
        return ((128, 128, 128) if dims == 3 else (160, 192)), {}, 1 if dims == 3 else 16
    fallback = (64, 64, 64) if dims == 3 else (160, 192)
    recipe = cpu_recipe(name, fallback, 8 if dims == 3 else 16)
    # 3D: the recipe's width at the paper's 128^3 crop and batch 1 (issue 4); 2D: the recipe's
    # slices and batch.
    if dims == 3:
        return (128, 128, 128), recipe["args"], 1
    return tuple(recipe["size"]), recipe["args"], recipe["batch"]


def training_suite(suite: Suite, *, device: str, quick: bool, peak: dict[str, float]) -> None:
    """Every row of the suite (see the module docstring)."""
    on_gpu = device == "cuda"
    precision = "bf16" if native_bf16(device) else "fp32"
    warmup, repeats = (1, 1) if quick else ((3, 10) if on_gpu else (1, 3))
    step_s: dict[str, float] = {}
    for name in ("two_stage", "unet3d", "cunet"):
        size, args, batch = _step_settings(name, quick=quick, on_gpu=on_gpu)
        for checkpointing in (False, True) if name == "two_stage" else (False,):
            result = benchmark_training_step(
                name,
                size,
                precision=precision,
                checkpointing=checkpointing,
                batch=batch,
                device=device,
                model_args=args,
                warmup=warmup,
                repeats=repeats,
            )
            width = args.get("base_width", "paper")
            what = f"train {name} {size_text(size)} batch {batch}, width {width}, {precision}"
            step_s[f"{name}{'_ckpt' if checkpointing else ''}"] = result["s_per_iter"]
            two_stage = on_gpu and name == "two_stage"
            add_step_rows(
                suite,
                what + (", checkpointing" if checkpointing else ""),
                result,
                time_target=("<=", 0.25) if two_stage else None,
                memory_target=("<=", 8.0) if two_stage and checkpointing else None,
                limited_by=STEP_LIMIT
                + ("; recomputes each block's forward" if checkpointing else ""),
            )
            free_memory(device)
    if not on_gpu:
        _demo_recipe_step_rows(suite, quick=quick, warmup=warmup, repeats=repeats)
    if "two_stage_ckpt" in step_s:
        add_row(
            suite,
            "two_stage: checkpointing time overhead",
            step_s["two_stage_ckpt"] / step_s["two_stage"],
            "x",
            limited_by="compute (one extra forward per residual block)",
        )
    _loader_row(suite, step_s["two_stage"], quick=quick)


def _demo_recipe_step_rows(suite: Suite, *, quick: bool, warmup: int, repeats: int) -> None:
    """The demo's own training step (``two_stage_cpu``: its crop, batch and widths, channels-last)
    in fp32 and, where the CPU has native bf16, in bf16: whether bf16 pays at the demo's widths.

    Measured on an AVX512-BF16 EPYC it did not (the casts and the fp32 GroupNorm outweigh the
    faster convolutions at 8 channels), so the recipe pins fp32; this row shows it on any CPU.
    """
    recipe = cpu_recipe("two_stage", (48, 48, 48), 8)
    size = QUICK_3D if quick else recipe["size"]
    args = quick_overrides("two_stage", quick) if quick else recipe["args"]
    batch = 2 if quick else recipe["batch"]
    seconds: dict[str, float] = {}
    for precision in ("fp32", "bf16") if native_bf16("cpu") else ("fp32",):
        result = benchmark_training_step(
            "two_stage",
            size,
            precision=precision,
            batch=batch,
            device="cpu",
            model_args=args,
            warmup=warmup,
            repeats=max(repeats, 3),
            channels_last=True,
        )
        seconds[precision] = result["s_per_iter"]
        add_row(
            suite,
            f"train the demo recipe's step ({recipe['source']}: two_stage {size_text(size)} "
            f"batch {batch}, channels-last), {precision}: time",
            result["s_per_iter"],
            "s/it",
            limited_by="compute (forward + backward) and, at 8 channels, memory-bound "
            "normalisation and activations",
            params=result["params"],
        )
    if "bf16" in seconds:
        add_row(
            suite,
            "train the demo recipe's step: bf16 speed-up over fp32",
            seconds["fp32"] / seconds["bf16"],
            "x",
            limited_by="autocast casts and fp32 GroupNorm against faster bf16 convolutions",
            note="below 1: bf16 is slower at the demo's widths, so two_stage_cpu pins fp32",
        )


def _loader_row(suite: Suite, step_seconds: float, *, quick: bool) -> None:
    """Does one loader worker keep up with the step? (issue 4: the GPU must not wait for data)"""
    data = synthetic_data(quick)
    crop = QUICK_3D if quick else (128, 128, 128)
    rate = crop_rate(data.pre, crop, items=2 if quick else 10, repeats=1 if quick else 3)
    needed = 1.0 / step_seconds
    add_row(
        suite,
        f"loader workers needed to feed two_stage ({size_text(crop)} crops)",
        float(math.ceil(needed / rate)),
        "workers",
        limited_by="memory bandwidth of crops + augmentation vs the step time",
        crops_per_s_per_worker=rate,
        steps_per_s=needed,
    )
