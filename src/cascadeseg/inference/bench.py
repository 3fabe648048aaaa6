"""Inference benchmarks for the benchmark suite (``cascadeseg benchmark --suite inference``).

Each function measures (warm-up, repeats, median) and returns numbers; nothing is written here.
Figures depend on the machine and its load: the lead records them on a quiet machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cascadeseg.data.case import Case
from cascadeseg.inference.loading import LoadedModel, load_models, size_divisor_of
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.predictor import predict_case
from cascadeseg.inference.sliding import crop_padding, pad_to_multiple
from cascadeseg.inference.tta import flip_tta_moments
from cascadeseg.inference.volume import probability_fn, use_channels_last
from cascadeseg.runtime import effective_precision, resolve_device

#: A BraTS brain after cropping to its bounding box (+4 voxels) is about this size (voxels).
BRAIN_CROP_SIZE: tuple[int, int, int] = (144, 176, 144)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure_matmul_peak(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048
) -> float:
    """Achievable matmul throughput in GFLOP/s (median of 5 ``n x n`` products after warm-up)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = _timed(lambda: a @ b, device, repeats=5, warmup=2)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def count_forward_flops(member: LoadedModel, size: Sequence[int]) -> float:
    """FLOPs of one forward pass on a ``(1, C, *size)`` input (PyTorch's FLOP counter).

    Counted at a reduced size (each side halved until under 64^3 voxels, kept a multiple of the
    padding multiple) and scaled by the voxel ratio: a fully convolutional network's cost is
    linear in voxels.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if not isinstance(member.network, torch.nn.Module):
        return float("nan")
    small = list(int(s) for s in size)
    m = member.size_divisor
    while np.prod(small) > 64**3 and all(s // 2 >= m for s in small):
        small = [max(m, (s // 2) // m * m) for s in small]
    x = torch.zeros((1, member.in_channels, *small), device=member.device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        member.network(x)
    return float(counter.get_total_flops()) * float(np.prod(size)) / float(np.prod(small))


def _member(
    name: str, model_args: dict[str, Any] | None, device: torch.device, seed: int
) -> LoadedModel:
    from cascadeseg.data.preprocess import PreprocessConfig
    from cascadeseg.models.registry import build_model

    torch.manual_seed(seed)
    network = build_model(name, **(model_args or {})).eval().to(device)
    spatial_dims = int(getattr(network, "spatial_dims", 3))
    in_channels = int(getattr(network, "in_channels", 4))
    return LoadedModel(
        network=network,
        name=name,
        spatial_dims=spatial_dims,
        output_kind=str(getattr(network, "output_kind", "regions")),
        in_channels=in_channels,
        slice_context=(in_channels // 4 - 1) // 2 if spatial_dims == 2 else 0,
        preprocess=PreprocessConfig(),
        patch_size=(128,) * spatial_dims,
        size_divisor=size_divisor_of(network),
        et_min_voxels=None,
        source=Path(f"<{name}>"),
        model_args=dict(model_args or {}),
        device=device,
    )


def benchmark_inference(
    name: str = "two_stage",
    size: Sequence[int] = BRAIN_CROP_SIZE,
    precision: str = "fp32",
    tta: bool = False,
    device: str | torch.device = "cpu",
    *,
    case: Case | str | Path | None = None,
    model: str | Path | None = None,
    model_args: dict[str, Any] | None = None,
    repeats: int = 3,
    warmup: int = 1,
    compare_fp32: bool = True,
    backend: str = "torch",
    seed: int = 0,
    matmul_size: int = 2048,
    channels_last: bool | None = None,
) -> dict[str, Any]:
    """Seconds per case of one whole-volume prediction (median of ``repeats`` after ``warmup``).

    Args:
        name: registered model (paper width by default; ``model_args`` overrides).
        size: spatial size of the random input when no ``case`` is given (3D: a cropped brain;
            2D models: ``(H, W, slices)``).
        precision: ``fp32`` or ``bf16`` (falls back to fp32 where unsupported; see
            ``precision_used``).
        tta: 8 (3D) or 4 (2D) flips per case instead of one pass.
        device: ``cpu`` or ``cuda``.
        case: a :class:`Case`, a case folder or a dataset folder (its first case): the timing
            then covers reading the files (for paths), preprocessing, the network, TTA,
            restoring the geometry and thresholding, i.e. :func:`predict_case`.
        model: a checkpoint or run directory to use instead of random weights (its first member).
        model_args: constructor overrides for ``name``.
        repeats: timed repetitions.
        warmup: untimed runs first (allocator, oneDNN primitive caches, cuDNN autotuning).
        compare_fp32: with bf16, also run fp32 once and report the Dice of the thresholded
            regions against it.
        backend: ``torch`` or ``onnx``.
        seed: seed of the random weights and input.
        matmul_size: side of the square matmul that measures the peak.
        channels_last: memory format of 3D networks (``None``: the predictor's default).

    Returns:
        ``{"seconds_median", "seconds_all", "passes", "precision_used", "gflop_per_case",
        "gflops_per_s", "matmul_peak_gflops", "fraction_of_peak", "dice_vs_fp32" (bf16 only),
        ...}``.
    """
    device = resolve_device(device)
    if model is not None:
        member = load_models([model], device)[0]
    else:
        member = _member(name, model_args, device, seed)
    used, note = effective_precision(precision, device)
    options = PredictOptions(
        tta=tta,
        precision=precision,
        device=str(device),
        sliding_window="never",
        backend=backend,
        channels_last=channels_last,
        progress=False,
    )
    passes = (2**member.spatial_dims if tta else 1) if member.spatial_dims == 3 else None
    result: dict[str, Any] = {
        "model": member.name,
        "device": str(device),
        "precision": precision,
        "precision_used": used,
        "precision_note": note,
        "tta": tta,
        "backend": backend,
        "threads": torch.get_num_threads(),
    }

    # Spatial size the network ran on (the FLOP count's size). For a case, the preprocessed
    # brain crop, not the source grid: the FLOPs of a 240x240x155 forward would overstate GFLOP/s.
    network_size: list[int] = []
    if case is not None:
        from cascadeseg.data.layouts import discover_cases, read_case

        def run(prec: str) -> np.ndarray:
            c = case
            if isinstance(c, (str, Path)):  # reading the files is part of the timing
                c = read_case(discover_cases(Path(c))[0])
            assert isinstance(c, Case)
            prediction = predict_case(c, [member], replace(options, precision=prec))
            network_size[:] = prediction.info["network_input_size"]
            return prediction.probabilities

        if isinstance(case, Case):
            spatial = [int(s) for s in case.image.shape[1:]]
        else:
            spatial = [int(s) for s in read_case(discover_cases(Path(case))[0]).image.shape[1:]]
        result["data_loading_included"] = isinstance(case, (str, Path))
    else:
        generator = torch.Generator().manual_seed(seed)
        spatial = [int(s) for s in size]
        if member.spatial_dims == 3:
            image = torch.randn((1, member.in_channels, *spatial), generator=generator)
        else:  # (H, W, slices): the slices are the batch
            image = torch.randn(
                (spatial[2], member.in_channels, spatial[0], spatial[1]), generator=generator
            )
        image, pads = pad_to_multiple(image, member.size_divisor)
        image = image.to(device)
        dims = member.spatial_dims
        use_cl = use_channels_last(member, options, device)
        result["channels_last"] = use_cl

        def run(prec: str) -> np.ndarray:
            fn = probability_fn(member, prec, device, use_cl)

            with torch.inference_mode():
                mean, _, _ = flip_tta_moments(fn, image, spatial_dims=dims, tta=tta)
            # (B, 3, ...) -> (3, B, ...): regions first, as predict_case returns them
            return np.moveaxis(crop_padding(mean, pads).cpu().numpy(), 1, 0)

        result["data_loading_included"] = False

    times = _timed(lambda: run(used), device, repeats, warmup)
    result["size"] = spatial
    if network_size:
        spatial = network_size
        result["network_size"] = network_size
    probs = reference = None
    if used == "bf16" and compare_fp32:
        probs, reference = run("bf16"), run("fp32")
    median = statistics.median(times)
    result["seconds_median"] = median
    result["seconds_all"] = times
    result["passes"] = passes if passes is not None else (4 if tta else 1)
    if member.spatial_dims == 3:
        flops = count_forward_flops(member, spatial) * result["passes"]
    else:
        flops = count_forward_flops(member, spatial[:2]) * spatial[2] * result["passes"]
    result["gflop_per_case"] = flops / 1e9
    result["gflops_per_s"] = flops / median / 1e9
    peak = measure_matmul_peak(
        device, torch.bfloat16 if used == "bf16" else torch.float32, n=matmul_size
    )
    result["matmul_peak_gflops"] = peak
    result["fraction_of_peak"] = result["gflops_per_s"] / peak
    if probs is not None and reference is not None:
        from cascadeseg.evaluation.metrics import dice

        result["dice_vs_fp32"] = {
            region: dice(probs[i] >= 0.5, reference[i] >= 0.5)
            for i, region in enumerate(("WT", "TC", "ET"))
        }
    return result
