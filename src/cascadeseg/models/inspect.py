"""Inspecting networks without running them: FLOP counts and layer tables.

Both run the model on the ``meta`` device (shapes only, no arithmetic, no memory), so they cost
milliseconds at any input size; the model passed in is not changed (a ``meta`` copy runs).
FLOPs are counted by ``torch.utils.flop_counter`` (2 per multiply-accumulate of convolutions and
matrix products; normalisation, activations and additions are not counted). ``cascadeseg info``
prints them; the benchmarks divide them by measured seconds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cascadeseg.errors import ModelError
from cascadeseg.models import build_model
from cascadeseg.models.protocol import HasTrainingOnlyModules


def network_input_shape(model: nn.Module, size: Sequence[int], batch: int = 1) -> tuple[int, ...]:
    """``(batch, model.in_channels, *size)``, the input of a registered network.

    Raises:
        ModelError: ``size`` has not ``model.spatial_dims`` sides.
    """
    dims = cast(int, model.spatial_dims)
    if len(size) != dims:
        raise ModelError(f"input size {list(size)} has {len(size)} sides; the model is {dims}D")
    return (batch, cast(int, model.in_channels), *(int(s) for s in size))


def build_meta_model(name: str, **overrides: Any) -> nn.Module:
    """``build_model`` with parameters on the ``meta`` device (no memory, no initialisation)."""
    with torch.device("meta"):
        return build_model(name, **overrides)


def _meta_copy(model: nn.Module) -> nn.Module:
    on_meta = all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    return model if on_meta else copy.deepcopy(model).to("meta")


def count_input_flops(
    model: nn.Module, input_shape: Sequence[int], *, training: bool = False
) -> int:
    """FLOPs of one forward of any module on an input of ``input_shape`` (batch and channels
    included): the count for networks outside the registry (MONAI's, nnU-Net's).

    ``training=True`` counts the training-mode forward (with training-only decoders and heads).
    """
    model = _meta_copy(model)
    model.train(training)
    x = torch.zeros(tuple(int(s) for s in input_shape), device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def count_flops(
    model: nn.Module, size: Sequence[int], *, batch: int = 1, training: bool = False
) -> int:
    """FLOPs of one forward of a registered network on a ``(batch, in_channels, *size)`` input.

    ``training=True`` counts the training-mode forward (with training-only decoders and heads).
    """
    return count_input_flops(model, network_input_shape(model, size, batch), training=training)


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


def _training_only_ids(model: nn.Module) -> set[int]:
    """Ids of every module below the model's ``training_only_modules()`` (none without it)."""
    modules = model.training_only_modules() if isinstance(model, HasTrainingOnlyModules) else []
    return {id(sub) for module in modules for sub in module.modules()}


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
    train_ids = _training_only_ids(model)
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
            model(torch.zeros(network_input_shape(model, size, 1), device="meta"))
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
