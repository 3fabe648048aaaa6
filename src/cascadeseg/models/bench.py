"""Measuring networks: FLOPs, layer tables and forward timings.

FLOPs and layer tables run the model on the ``meta`` device (shapes only, no arithmetic), so they
cost milliseconds at any input size. FLOPs are counted by ``torch.utils.flop_counter``
(2 per multiply-accumulate of convolutions and matrix products; normalisation, activations and
additions are not counted). Timings run on the CPU for real: warm-up, then ``repeats`` timed
forwards, median reported.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cascadeseg.errors import ModelError
from cascadeseg.models.outputs import region_probabilities
from cascadeseg.models.registry import build_model

PRECISIONS = ("fp32", "bf16", "bf16_pure")


def _input_shape(model: nn.Module, size: Sequence[int], batch: int) -> tuple[int, ...]:
    dims = int(getattr(model, "spatial_dims", len(size)))
    if len(size) != dims:
        raise ModelError(f"input size {list(size)} has {len(size)} sides; the model is {dims}D")
    return (batch, int(getattr(model, "in_channels", 4)), *(int(s) for s in size))


def build_meta_model(name: str, **overrides: Any) -> nn.Module:
    """``build_model`` with parameters on the ``meta`` device (no memory, no initialisation)."""
    with torch.device("meta"):
        return build_model(name, **overrides)


def _meta_copy(model: nn.Module) -> nn.Module:
    on_meta = all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    return model if on_meta else copy.deepcopy(model).to("meta")


def count_flops(
    model: nn.Module, size: Sequence[int], *, batch: int = 1, training: bool = False
) -> int:
    """FLOPs of one forward of ``model`` on a ``(batch, in_channels, *size)`` input.

    ``training=True`` counts the training-mode forward (with training-only decoders and heads).
    Runs on a ``meta`` copy of the model (no arithmetic); ``model`` itself is not changed.
    """
    model = _meta_copy(model)
    model.train(training)
    x = torch.zeros(_input_shape(model, size, batch), device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class LayerRow:
    """One row of :func:`layer_table`: module name, output shape without batch, parameters."""

    name: str
    kind: str
    output_shape: str
    parameters: int
    training_only: bool


def _shape_text(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "x".join(str(s) for s in value.shape[1:])
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shape_text(v) for v in value) + "]"
    return "None" if value is None else type(value).__name__


def layer_table(
    model: nn.Module, size: Sequence[int], *, depth: int = 3, training: bool = True
) -> list[LayerRow]:
    """Output shape and parameter count of every module named with at most ``depth`` parts.

    Shapes come from forward hooks during one forward of a ``meta`` copy of the model (``model``
    is not changed) at input ``(1, in_channels, *size)``; a module that ran more than once shows
    its first output. Modules that did not run show ``"-"``.
    """
    model = _meta_copy(model)
    model.train(training)
    training_only = getattr(model, "training_only_modules", None)
    train_ids = {
        id(sub) for m in (training_only() if callable(training_only) else []) for sub in m.modules()
    }
    shapes: dict[str, str] = {}
    handles = []
    selected = [
        (name, module)
        for name, module in model.named_modules()
        if name and len(name.split(".")) <= depth
    ]
    for name, module in selected:

        def hook(_m: nn.Module, _in: Any, out: Any, name: str = name) -> None:
            shapes.setdefault(name, _shape_text(out))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(_input_shape(model, size, 1), device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return [
        LayerRow(
            name=name,
            kind=type(module).__name__,
            output_shape=shapes.get(name, "-"),
            parameters=sum(p.numel() for p in module.parameters()),
            training_only=id(module) in train_ids,
        )
        for name, module in selected
    ]


def _autocast(precision: str) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _prepare(
    model: nn.Module, x: torch.Tensor, precision: str, channels_last: bool
) -> tuple[nn.Module, torch.Tensor]:
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
) -> dict[str, Any]:
    """Time the eval-mode forward of model ``name`` on one random input.

    Args:
        name: registered model name; ``overrides`` its constructor overrides.
        size: spatial size (3 sides for 3D models, 2 for 2D); 160x192x128 is the whole-brain
            crop of Myronenko / the two-stage paper's inference.
        precision: ``"fp32"``, ``"bf16"`` (autocast: convolutions in bf16, GroupNorm in fp32)
            or ``"bf16_pure"`` (the whole model cast to bf16).
        repeats: timed forwards after ``warmup`` untimed ones.
        channels_last: use ``channels_last(_3d)`` memory format for weights and input.

    Returns:
        dict with ``model, size, batch, precision, channels_last, threads, cpu_capability,
        seconds`` (median),
        ``seconds_all``, ``flops`` (one forward) and ``gflops_per_s`` (= flops / seconds / 1e9).
    """
    torch.manual_seed(seed)
    model: nn.Module = build_model(name, **(overrides or {})).eval()
    shape = _input_shape(model, size, batch)
    flops = count_flops(build_meta_model(name, **(overrides or {})), size, batch=batch)
    x = torch.randn(shape)
    model, x = _prepare(model, x, precision, channels_last)
    times = []
    with torch.inference_mode(), _autocast(precision):
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
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
        "seconds_all": times,
        "flops": flops,
        "gflops_per_s": flops / seconds / 1e9,
    }


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def precision_agreement(
    model: nn.Module,
    image: torch.Tensor,
    precision: str = "bf16",
    *,
    channels_last: bool = False,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Dice between the fp32 and the ``precision`` segmentations of one input.

    Args:
        model: a (trained) model in any mode; it is switched to eval mode and not modified
            (``bf16_pure`` works on a copy).
        image: ``(B, in_channels, *S)`` input.

    Returns:
        ``{"WT": d, "TC": d, "ET": d, "mean": d}``: Dice of the thresholded region
        probabilities ``[WT, TC, ET]`` (1.0 when both are empty).
    """
    model = model.eval()
    kind = str(model.output_kind)
    with torch.inference_mode():
        reference = region_probabilities(model(image), kind) >= threshold
        other_model, x = _prepare(copy.deepcopy(model), image, precision, channels_last)
        with _autocast(precision):
            other = region_probabilities(other_model(x), kind).float() >= threshold
    dice = {
        region: _dice(reference[:, i], other[:, i]) for i, region in enumerate(("WT", "TC", "ET"))
    }
    dice["mean"] = sum(dice.values()) / 3
    return dice
