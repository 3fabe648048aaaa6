"""Whole-case prediction timings (the inference suite's end-to-end rows).

:func:`benchmark_inference` times one whole-volume prediction: either of a case, through the
predictor's :func:`~cascadeseg.inference.predictor.predict_case` (reading the files, when given
a path, preprocessing, the network, TTA, restoring the geometry and thresholding), or of a
random input of a given size (the network part alone: padding, passes, cropping, copying back).
It reports GFLOP/s against the matmul peak measured in the same call. Figures depend on the
machine and its load: the lead records them on a quiet machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from cascadeseg.bench.timing import matmul_gflops, measure
from cascadeseg.data.case import Case
from cascadeseg.data.layouts import discover_cases, read_case
from cascadeseg.data.preprocess import PreprocessConfig
from cascadeseg.evaluation.metrics import dice
from cascadeseg.inference.loading import LoadedModel, load_models, size_divisor_of
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.predictor import predict_case
from cascadeseg.inference.sliding import crop_padding, pad_to_multiple
from cascadeseg.inference.tta import flip_tta_moments
from cascadeseg.inference.volume import probability_fn, use_channels_last
from cascadeseg.models import build_model
from cascadeseg.models.inspect import count_input_flops
from cascadeseg.runtime import effective_precision, resolve_device

#: A BraTS brain after cropping to its bounding box (+4 voxels) is about this size (voxels).
BRAIN_CROP_SIZE: tuple[int, int, int] = (144, 176, 144)

#: One run of the prediction in a precision: the region probabilities ``(3, X, Y, Z)``.
Runner = Callable[[str], np.ndarray]


def count_forward_flops(member: LoadedModel, size: Sequence[int]) -> float:
    """FLOPs of one forward pass on a ``(1, C, *size)`` input (PyTorch's FLOP counter).

    Counted at a reduced size (each side halved until under 64^3 voxels, kept a multiple of the
    padding multiple) and scaled by the voxel ratio: a fully convolutional network's cost is
    linear in voxels. NaN for a network that is not a PyTorch module (ONNX Runtime).
    """
    if not isinstance(member.network, torch.nn.Module):
        return float("nan")
    small = list(int(s) for s in size)
    m = member.size_divisor
    while np.prod(small) > 64**3 and all(s // 2 >= m for s in small):
        small = [max(m, (s // 2) // m * m) for s in small]
    flops = count_input_flops(member.network, (1, member.in_channels, *small))
    return float(flops) * float(np.prod(size)) / float(np.prod(small))


def random_member(
    name: str, model_args: dict[str, Any] | None, device: torch.device, seed: int
) -> LoadedModel:
    """The registered network ``name`` with random weights (seeded), as a prediction member
    with default preprocessing."""
    torch.manual_seed(seed)
    network = build_model(name, **(model_args or {})).eval().to(device)
    spatial_dims = cast(int, network.spatial_dims)
    in_channels = cast(int, network.in_channels)
    return LoadedModel(
        network=network,
        name=name,
        spatial_dims=spatial_dims,
        output_kind=cast(str, network.output_kind),
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


def _case_runner(
    case: Case | str | Path, member: LoadedModel, options: PredictOptions, result: dict[str, Any]
) -> tuple[Runner, list[int], list[int]]:
    """A whole-case prediction through ``predict_case``, the case's source size, and the list
    the runner fills with the size the network ran on (the preprocessed brain crop)."""
    network_size: list[int] = []

    def run(precision: str) -> np.ndarray:
        c = case
        if not isinstance(c, Case):  # reading the files is part of the timing
            c = read_case(discover_cases(Path(c))[0])
        prediction = predict_case(c, [member], replace(options, precision=precision))
        network_size[:] = prediction.info["network_input_size"]
        return prediction.probabilities

    source = case if isinstance(case, Case) else read_case(discover_cases(Path(case))[0])
    result["data_loading_included"] = not isinstance(case, Case)
    return run, [int(s) for s in source.image.shape[1:]], network_size


def _volume_runner(
    size: Sequence[int],
    member: LoadedModel,
    options: PredictOptions,
    device: torch.device,
    *,
    tta: bool,
    seed: int,
    result: dict[str, Any],
) -> Runner:
    """The network part on a random input of ``size`` (2D models: ``(H, W, slices)``)."""
    generator = torch.Generator().manual_seed(seed)
    spatial = [int(s) for s in size]
    if member.spatial_dims == 3:
        shape = (1, member.in_channels, *spatial)
    else:  # (H, W, slices): the slices are the batch
        shape = (spatial[2], member.in_channels, spatial[0], spatial[1])
    image, pads = pad_to_multiple(torch.randn(shape, generator=generator), member.size_divisor)
    image = image.to(device)
    use_cl = use_channels_last(member, options, device)
    result["channels_last"] = use_cl
    result["data_loading_included"] = False

    def run(precision: str) -> np.ndarray:
        fn = probability_fn(member, precision, device, use_cl)
        with torch.inference_mode():
            mean, _, _ = flip_tta_moments(fn, image, spatial_dims=member.spatial_dims, tta=tta)
        # (B, 3, ...) -> (3, B, ...): regions first, as predict_case returns them
        return np.moveaxis(crop_padding(mean, pads).cpu().numpy(), 1, 0)

    return run


def _flops_per_case(member: LoadedModel, spatial: Sequence[int], passes: int) -> float:
    """FLOPs of ``passes`` forwards over a case of ``spatial`` (2D: ``(H, W, slices)``)."""
    if member.spatial_dims == 3:
        return count_forward_flops(member, spatial) * passes
    return count_forward_flops(member, spatial[:2]) * spatial[2] * passes


def _dice_vs_fp32(run: Runner) -> dict[str, float]:
    """Dice per region of the bf16 prediction against the fp32 one (thresholds 0.5)."""
    probs, reference = run("bf16"), run("fp32")
    return {
        region: dice(probs[i] >= 0.5, reference[i] >= 0.5)
        for i, region in enumerate(("WT", "TC", "ET"))
    }


def _setup(
    member: LoadedModel,
    device: torch.device,
    precision: str,
    tta: bool,
    backend: str,
    channels_last: bool | None,
) -> tuple[PredictOptions, dict[str, Any]]:
    """The predictor's options for one whole-volume pass on ``device`` and the result's leading
    fields."""
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
    return options, result


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
        member = random_member(name, model_args, device, seed)
    options, result = _setup(member, device, precision, tta, backend, channels_last)
    used = result["precision_used"]
    # Spatial size the network ran on (the FLOP count's size). For a case, the preprocessed
    # brain crop, not the source grid: the FLOPs of a 240x240x155 forward would overstate GFLOP/s.
    network_size: list[int] = []
    if case is not None:
        run, spatial, network_size = _case_runner(case, member, options, result)
    else:
        run = _volume_runner(size, member, options, device, tta=tta, seed=seed, result=result)
        spatial = [int(s) for s in size]
    timing = measure(lambda: run(used), repeats=repeats, warmup=warmup, device=device)
    result["size"] = spatial
    if network_size:
        spatial = result["network_size"] = network_size
    agreement = _dice_vs_fp32(run) if used == "bf16" and compare_fp32 else None
    result["seconds_median"] = timing.median
    result["seconds_all"] = timing.times
    result["passes"] = (2**member.spatial_dims if member.spatial_dims == 3 else 4) if tta else 1
    flops = _flops_per_case(member, spatial, result["passes"])
    result.update(_peak_figures(flops, timing.median, used, device, matmul_size))
    if agreement is not None:
        result["dice_vs_fp32"] = agreement
    return result


def _peak_figures(
    flops: float, seconds: float, precision: str, device: torch.device, matmul_size: int
) -> dict[str, float]:
    """GFLOP per case, GFLOP/s, the matmul peak of ``precision`` measured now, and the share."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = matmul_gflops(device, dtype, matmul_size, repeats=5, warmup=2)
    return {
        "gflop_per_case": flops / 1e9,
        "gflops_per_s": flops / seconds / 1e9,
        "matmul_peak_gflops": peak,
        "fraction_of_peak": flops / seconds / 1e9 / peak,
    }
