"""Network forwards: timings per precision and memory format, and fp32-vs-bf16 agreement.

:func:`forward_seconds` times the eval-mode forward of any module (MONAI's peers included) on
any device; :func:`benchmark_forward` builds a registered network with random weights, times
it the same way and adds its FLOPs (:func:`cascadeseg.models.inspect.count_flops`).
:func:`precision_agreement` compares the thresholded region segmentations of fp32 with those of
a lower precision (Dice per region, from :func:`cascadeseg.evaluation.metrics.dice`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cascadeseg.bench.timing import Timing, measure
from cascadeseg.errors import ModelError
from cascadeseg.evaluation.metrics import dice
from cascadeseg.models import build_model
from cascadeseg.models.inspect import build_meta_model, count_flops, network_input_shape
from cascadeseg.models.outputs import region_probabilities
from cascadeseg.runtime import autocast

#: ``bf16``: autocast (convolutions in bf16, GroupNorm in fp32); ``bf16_pure``: the whole model
#: and its input cast to bf16.
PRECISIONS = ("fp32", "bf16", "bf16_pure")


def _prepare(
    model: nn.Module, x: torch.Tensor, precision: str, channels_last: bool
) -> tuple[nn.Module, torch.Tensor]:
    """``model`` and ``x`` in ``precision``'s dtype and the chosen memory format."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if precision == "bf16_pure":
        # Weights and activations in bf16, GroupNorm included (autocast keeps GN in fp32).
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    if channels_last:
        fmt = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
        # Module.to accepts memory_format at runtime; torch's stubs omit it.
        model = model.to(memory_format=fmt)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=fmt)
    return model, x


def _autocast(precision: str, device: torch.device | str) -> Any:
    """Autocast for ``bf16`` only (``bf16_pure`` runs in bf16 without it)."""
    return autocast("bf16" if precision == "bf16" else "fp32", device)


def forward_timing(
    model: nn.Module,
    x: torch.Tensor,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    device: str = "cpu",
    repeats: int = 3,
    warmup: int = 1,
) -> Timing:
    """Wall times of eval-mode forwards of ``model`` on ``x`` (both moved to ``device``).

    ``precision`` is one of :data:`PRECISIONS`; ``channels_last`` uses the
    ``channels_last(_3d)`` memory format for weights and input.
    """
    model, x = _prepare(model.eval().to(device), x.to(device), precision, channels_last)

    def run() -> None:
        with torch.inference_mode(), _autocast(precision, device):
            model(x)

    return measure(run, repeats=repeats, warmup=warmup, device=device)


def forward_seconds(model: nn.Module, x: torch.Tensor, **options: Any) -> float:
    """Median seconds of one eval-mode forward (``options`` as :func:`forward_timing`)."""
    return forward_timing(model, x, **options).median


def benchmark_forward(
    name: str,
    size: Sequence[int] = (160, 192, 128),
    precision: str = "fp32",
    repeats: int = 3,
    *,
    overrides: dict[str, Any] | None = None,
    channels_last: bool = False,
    batch: int = 1,
    warmup: int = 1,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Time the eval-mode forward of model ``name`` on one random input.

    Args:
        name: registered model name; ``overrides`` its constructor overrides.
        size: spatial size (3 sides for 3D models, 2 for 2D); 160x192x128 is the whole-brain
            crop of Myronenko / the two-stage paper's inference.
        precision: one of :data:`PRECISIONS`.
        repeats: timed forwards after ``warmup`` untimed ones.
        channels_last: use ``channels_last(_3d)`` memory format for weights and input.
        device: ``cpu`` or ``cuda``.

    Returns:
        dict with ``model, size, batch, precision, channels_last, threads, cpu_capability,
        seconds`` (median),
        ``seconds_all``, ``flops`` (one forward) and ``gflops_per_s`` (= flops / seconds / 1e9).
    """
    torch.manual_seed(seed)
    model = build_model(name, **(overrides or {}))
    x = torch.randn(network_input_shape(model, size, batch))
    flops = count_flops(build_meta_model(name, **(overrides or {})), size, batch=batch)
    timing = forward_timing(
        model,
        x,
        precision=precision,
        channels_last=channels_last,
        device=device,
        repeats=repeats,
        warmup=warmup,
    )
    seconds = timing.median
    return {
        "model": name,
        "size": list(size),
        "batch": batch,
        "precision": precision,
        "channels_last": channels_last,
        "threads": torch.get_num_threads(),
        # "AVX2" CPUs have no native bf16 convolution (oneDNN needs AVX512-BF16 or AMX); bf16
        # then runs a slow fallback, far slower than fp32.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "seconds": seconds,
        "seconds_all": timing.times,
        "flops": flops,
        "gflops_per_s": flops / seconds / 1e9,
    }


def _agreement(
    model: nn.Module,
    image: torch.Tensor,
    precision: str,
    *,
    device: str,
    channels_last: bool,
    threshold: float,
) -> tuple[dict[str, float], float]:
    """Dice per region ``[WT, TC, ET]`` and their mean between the fp32 and the ``precision``
    segmentations, and the largest absolute difference of the region probabilities."""
    model = model.eval().to(device)
    image = image.to(device)
    kind = str(model.output_kind)
    with torch.inference_mode():
        reference = region_probabilities(model(image), kind).float()
        other_model, x = _prepare(copy.deepcopy(model), image, precision, channels_last)
        with _autocast(precision, device):
            other = region_probabilities(other_model(x), kind).float()
    ref_masks = (reference >= threshold).cpu().numpy()
    other_masks = (other >= threshold).cpu().numpy()
    scores = {
        region: dice(other_masks[:, i], ref_masks[:, i])
        for i, region in enumerate(("WT", "TC", "ET"))
    }
    scores["mean"] = sum(scores.values()) / 3
    return scores, float((reference - other).abs().max())


def precision_agreement(
    model: nn.Module,
    image: torch.Tensor,
    precision: str = "bf16",
    *,
    channels_last: bool = False,
    threshold: float = 0.5,
    device: str = "cpu",
) -> dict[str, float]:
    """Dice between the fp32 and the ``precision`` segmentations of one input.

    Args:
        model: a (trained) model in any mode; it is switched to eval mode and moved to
            ``device``, its weights are not modified (``bf16_pure`` works on a copy).
        image: ``(B, in_channels, *S)`` input.

    Returns:
        ``{"WT": d, "TC": d, "ET": d, "mean": d}``: Dice of the thresholded region
        probabilities ``[WT, TC, ET]`` (1.0 when both are empty).
    """
    scores, _ = _agreement(
        model, image, precision, device=device, channels_last=channels_last, threshold=threshold
    )
    return scores


def segmentation_agreement(
    model: nn.Module, x: torch.Tensor, *, device: str = "cpu", threshold: float = 0.5
) -> dict[str, float]:
    """:func:`precision_agreement` of bf16 autocast on ``device``, plus ``max_abs_diff``: the
    largest absolute difference of the region probabilities."""
    scores, diff = _agreement(
        model, x, "bf16", device=device, channels_last=False, threshold=threshold
    )
    return {**scores, "max_abs_diff": diff}


def segresnet_peer(
    width: int,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
) -> nn.Module | None:
    """MONAI's SegResNet (Myronenko 2018) as a peer network: 4 modalities in, 3 regions out,
    ``init_filters=width``, random weights of seed 0; ``None`` where monai is not installed."""
    try:
        from monai.networks.nets import SegResNet  # optional: a peer network
    except ImportError:
        return None
    torch.manual_seed(0)
    return SegResNet(
        spatial_dims=3,
        init_filters=width,
        in_channels=4,
        out_channels=3,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
    )
