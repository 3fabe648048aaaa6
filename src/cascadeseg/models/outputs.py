"""What networks return, one record per output kind; region probabilities; parameter counts.

Every registered network declares an ``output_kind``, a key of :data:`OUTPUT_KINDS`. Its
:class:`OutputKind` record says what such a network returns and turns that into ``(B, 3, *S)``
probabilities of ``[WT, TC, ET]`` (:func:`region_probabilities`). TTA, ensembles and thresholding
all work on these probabilities, so they never need to know which network made them.

A new kind is one :func:`register_output_kind` function here (or in the network's own module)
plus its loss, registered with :func:`cascadeseg.losses.composite.register_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from cascadeseg.data.labels import ET, NCR
from cascadeseg.errors import ModelError
from cascadeseg.models.protocol import HasTrainingOnlyModules

ToProbabilities = Callable[[Any], torch.Tensor]


class TwoStageOutput(NamedTuple):
    """Training-mode output of ``two_stage``: three ``(B, 3, X, Y, Z)`` logits [WT, TC, ET].

    Attributes:
        stage1: stage 1 (coarse) logits.
        stage2: stage 2 logits from the transposed-convolution decoder (the inference output).
        stage2_interp: stage 2 logits from the trilinear-interpolation decoder (training only).
    """

    stage1: torch.Tensor
    stage2: torch.Tensor
    stage2_interp: torch.Tensor


class CUNetOutput(NamedTuple):
    """Output of ``cunet``.

    Attributes:
        branch1: ``(B, 2, H, W)`` logits of U-Net 1 (channel 1 = whole tumour).
        branch2: ``(B, 4, H, W)`` logits of U-Net 2 over internal labels 0..3.
        aux: training mode: 8 logits at input resolution, aux 1-4 from U-Net 1's stages
            (``(B, 2, H, W)``, deepest first), aux 5-8 from U-Net 2's (``(B, 4, H, W)``);
            eval mode: ``()``.
    """

    branch1: torch.Tensor
    branch2: torch.Tensor
    aux: tuple[torch.Tensor, ...]


class BFCNOutput(NamedTuple):
    """Output of ``bfcn`` (training and eval mode alike).

    Attributes:
        tissue: ``(B, 4, H, W)`` logits of the tissue branch over internal labels 0..3.
        boundary: ``(B, 2, H, W)`` logits of the boundary branch (channel 1 = label boundary).
        fused: ``(B, 4, H, W)`` logits of the fusion of both branches (the segmentation).
    """

    tissue: torch.Tensor
    boundary: torch.Tensor
    fused: torch.Tensor


@dataclass(frozen=True)
class OutputKind:
    """One kind of network output.

    Attributes:
        name: the kind's name, the ``output_kind`` of the networks that return it.
        returns: what such a network returns in eval mode (shapes, types).
        to_probabilities: eval output -> ``(B, 3, *S)`` float probabilities of
            ``[WT, TC, ET]``; raises :class:`ModelError` on an output of the wrong type or
            channel count. Its docstring says how the probabilities are computed.
    """

    name: str
    returns: str
    to_probabilities: ToProbabilities


#: Every output kind by name.
OUTPUT_KINDS: dict[str, OutputKind] = {}


def register_output_kind(
    name: str, *, returns: str
) -> Callable[[ToProbabilities], ToProbabilities]:
    """Function decorator adding the output kind ``name`` (see :class:`OutputKind`).

    Raises:
        ValueError: ``name`` is already registered with another function.
    """

    def decorate(function: ToProbabilities) -> ToProbabilities:
        known = OUTPUT_KINDS.get(name)
        if known is not None and known.to_probabilities is not function:
            raise ValueError(f"output kind {name!r} is already registered")
        OUTPUT_KINDS[name] = OutputKind(name, returns, function)
        return function

    return decorate


def region_probabilities(output: Any, output_kind: str) -> torch.Tensor:
    """``(B, 3, *S)`` probabilities of ``[WT, TC, ET]`` from a model's output.

    Args:
        output: what the model returned in eval mode (a training-mode ``TwoStageOutput`` is
            accepted too: its ``stage2`` is used, as at inference).
        output_kind: the model's ``output_kind``, a key of :data:`OUTPUT_KINDS`.

    Raises:
        ModelError: unknown ``output_kind`` or an output of the wrong type or channel count.
    """
    kind = OUTPUT_KINDS.get(output_kind)
    if kind is None:
        raise ModelError(f"unknown output kind {output_kind!r} (known: {', '.join(OUTPUT_KINDS)})")
    return kind.to_probabilities(output)


def _check_channels(x: Any, channels: int, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 3 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ModelError(f"output kind {what!r} needs {channels} channels, got {shape}")


def _check_type(output: Any, kind: str, expected: type) -> None:
    if not isinstance(output, expected):
        raise ModelError(
            f"output kind {kind!r} needs a {expected.__name__}, got {type(output).__name__}"
        )


@register_output_kind(
    "regions",
    returns="``(B, 3, *S)`` logits of [WT, TC, ET] (``two_stage``, ``unet3d``); a training-mode "
    ":class:`TwoStageOutput` is read by its ``stage2``",
)
def _regions(output: Any) -> torch.Tensor:
    """Sigmoid per channel."""
    logits = output.stage2 if isinstance(output, TwoStageOutput) else output
    _check_channels(logits, 3, "regions")
    return torch.sigmoid(logits)


@register_output_kind(
    "labels", returns="``(B, 4, *S)`` logits over the internal labels 0..3 (``unet2d``, ``drn``)"
)
def _labels(output: Any) -> torch.Tensor:
    """With ``p = softmax``: WT = 1 - p0, TC = p_NCR + p_ET, ET = p_ET."""
    _check_channels(output, 4, "labels")
    p = torch.softmax(output, dim=1)
    return torch.stack([1.0 - p[:, 0], p[:, NCR] + p[:, ET], p[:, ET]], dim=1)


@register_output_kind("cunet", returns=":class:`CUNetOutput` (``cunet``)")
def _cunet(output: Any) -> torch.Tensor:
    """WT = softmax(branch1)[1]; TC and ET from branch2's tumour channels, times WT.

    U-Net 2 is trained on tumour pixels only (CU-Net section 2.2: p1 = p2 = 0), so its background
    channel is ignored: with ``q = softmax`` over branch2's tumour channels (NCR, ED, ET),
    TC = WT * (q_NCR + q_ET) and ET = WT * q_ET, keeping ET <= TC <= WT.
    """
    _check_type(output, "cunet", CUNetOutput)
    _check_channels(output.branch1, 2, "cunet branch1")
    _check_channels(output.branch2, 4, "cunet branch2")
    wt = torch.softmax(output.branch1, dim=1)[:, 1]
    # Softmax over the tumour channels (internal labels NCR, ED, ET = 1, 2, 3) only.
    q = torch.softmax(output.branch2[:, NCR : ET + 1], dim=1)
    q_ncr, q_et = q[:, NCR - NCR], q[:, ET - NCR]
    return torch.stack([wt, wt * (q_ncr + q_et), wt * q_et], dim=1)


@register_output_kind("bfcn", returns=":class:`BFCNOutput` (``bfcn``)")
def _bfcn(output: Any) -> torch.Tensor:
    """The ``fused`` logits read as ``"labels"``."""
    _check_type(output, "bfcn", BFCNOutput)
    return _labels(output.fused)


@register_output_kind(
    "probabilities",
    returns="``(B, 3, *S)`` probabilities of [WT, TC, ET] already (exported ONNX networks, "
    "test doubles); no loss trains it",
)
def _probabilities(output: Any) -> torch.Tensor:
    """The output itself."""
    _check_channels(output, 3, "probabilities")
    return output


def count_parameters(model: nn.Module, *, training: bool) -> int:
    """Number of parameters (elements) of ``model``.

    ``training=False`` leaves out the modules used only in training mode, as named by the
    model's ``training_only_modules()`` (two_stage: the interpolation decoder; cunet: the 8
    auxiliary heads; see :class:`cascadeseg.models.protocol.HasTrainingOnlyModules`).
    """
    params = {id(p): p.numel() for p in model.parameters()}
    if not training and isinstance(model, HasTrainingOnlyModules):
        for module in model.training_only_modules():
            for p in module.parameters():
                params.pop(id(p), None)
    return sum(params.values())
