"""The network contract: what every registered network has, for the code that runs it.

* :class:`SegmentationNetwork`: the attributes the trainer, the predictor and the exporters read
  (``spatial_dims``, ``in_channels``, ``output_kind``, ``size_multiple``, ``model_args``) and
  the call.
* :class:`SegmentationModule`: the type :func:`cascadeseg.models.build_model` returns, an
  ``nn.Module`` with those attributes (``isinstance`` checks both; networks need not subclass it).
* :class:`HasTrainingOnlyModules`: the optional ``training_only_modules()`` of networks with
  modules used in training mode only (left out of inference parameter counts).

Read the attributes directly (``model.spatial_dims``): every network built by the registry has
them, :func:`contract_problems` lists what an object lacks.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class SegmentationNetwork(Protocol):
    """A segmentation network as the rest of the package sees it.

    Attributes:
        spatial_dims: 2 (axial slices ``(B, C, H, W)``) or 3 (volumes ``(B, C, X, Y, Z)``);
            a class attribute of the registered class.
        in_channels: channels ``C`` of the input (4 modalities, times ``2 * context + 1`` for
            2D networks given neighbouring slices).
        output_kind: key of :data:`cascadeseg.models.outputs.OUTPUT_KINDS`: what the network
            returns and how that becomes ``[WT, TC, ET]`` probabilities; a class attribute.
        size_multiple: every spatial side of the input must be a multiple of this (the
            network's total down-sampling, e.g. 16 for four stride-2 levels; 1 for none); the
            predictor pads to it.
        model_args: the full constructor keyword arguments (set by ``build_model``;
            ``build_model(name, **model.model_args)`` rebuilds the network).
    """

    spatial_dims: int
    in_channels: int
    output_kind: str
    size_multiple: int
    model_args: dict[str, Any]

    def __call__(self, x: torch.Tensor) -> Any:
        """``(B, in_channels, *S)`` input -> the output described by ``output_kind``."""
        ...


class _ModuleAndNetwork(type):
    # isinstance(x, SegmentationModule) is "an nn.Module that satisfies SegmentationNetwork";
    # the registered classes do not derive from SegmentationModule.
    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, nn.Module) and isinstance(instance, SegmentationNetwork)


class SegmentationModule(nn.Module, metaclass=_ModuleAndNetwork):
    """Type of a built network: an ``nn.Module`` satisfying :class:`SegmentationNetwork`.

    A typing view: registered networks subclass ``nn.Module`` only, and ``isinstance(m,
    SegmentationModule)`` is true for any module with the contract's attributes.
    """

    spatial_dims: int
    in_channels: int
    output_kind: str
    size_multiple: int
    model_args: dict[str, Any]


@runtime_checkable
class HasTrainingOnlyModules(Protocol):
    """A network with modules used in training mode only (two_stage, cunet)."""

    def training_only_modules(self) -> list[nn.Module]:
        """The modules whose outputs exist in training mode only."""
        ...


def contract_problems(network: Any) -> list[str]:
    """What ``network`` lacks of :class:`SegmentationNetwork` (empty: it satisfies it).

    Checks the attributes' presence and values: ``spatial_dims`` 2 or 3, ``in_channels`` a
    positive integer, ``output_kind`` a string, ``size_multiple`` a positive integer,
    ``model_args`` a dict.
    """

    def positive_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    checks = {
        "spatial_dims": lambda v: v in (2, 3) and not isinstance(v, bool),
        "in_channels": positive_int,
        "output_kind": lambda v: isinstance(v, str),
        "size_multiple": positive_int,
        "model_args": lambda v: isinstance(v, dict),
    }
    problems = []
    for name, fits in checks.items():
        if not hasattr(network, name):
            problems.append(f"no attribute {name}")
        elif not fits(getattr(network, name)):
            problems.append(f"{name}={getattr(network, name)!r}")
    if not callable(network):
        problems.append("not callable")
    return problems
