"""Turning any model's output into region probabilities ``[WT, TC, ET]``; parameter counts.

TTA, ensembles and thresholding all work on the ``(B, 3, ...)`` probabilities returned by
:func:`region_probabilities`, so they never need to know which network made them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cascadeseg.data.labels import ET, NCR
from cascadeseg.errors import ModelError
from cascadeseg.models.bfcn import BFCNOutput
from cascadeseg.models.cunet import CUNetOutput
from cascadeseg.models.two_stage import TwoStageOutput


def region_probabilities(output: Any, output_kind: str) -> torch.Tensor:
    """``(B, 3, *S)`` probabilities of ``[WT, TC, ET]`` from a model's output.

    Args:
        output: what the model returned in eval mode (a training-mode ``TwoStageOutput`` is
            accepted too: its ``stage2`` is used, as at inference).
        output_kind: the model's ``output_kind``:

            * ``"regions"``: ``(B, 3, *S)`` logits; sigmoid per channel.
            * ``"labels"``: ``(B, 4, *S)`` logits over internal labels; with ``p = softmax``,
              WT = 1 - p0, TC = p_NCR + p_ET, ET = p_ET.
            * ``"cunet"``: :class:`CUNetOutput`; WT = softmax(branch1)[1]. U-Net 2 is trained on
              tumour pixels only (CU-Net section 2.2: p1 = p2 = 0), so its background channel is
              ignored: with ``q = softmax`` over branch2's tumour channels (NCR, ED, ET),
              TC = WT * (q_NCR + q_ET) and ET = WT * q_ET, keeping ET <= TC <= WT.
            * ``"bfcn"``: :class:`BFCNOutput`; its ``fused`` logits as ``"labels"``.

    Raises:
        ModelError: unknown ``output_kind`` or an output of the wrong type or channel count.
    """
    if output_kind == "regions":
        logits = output.stage2 if isinstance(output, TwoStageOutput) else output
        _check_channels(logits, 3, output_kind)
        return torch.sigmoid(logits)
    if output_kind == "bfcn":
        if not isinstance(output, BFCNOutput):
            raise ModelError(f"output kind 'bfcn' needs a BFCNOutput, got {type(output).__name__}")
        return region_probabilities(output.fused, "labels")
    if output_kind == "labels":
        _check_channels(output, 4, output_kind)
        p = torch.softmax(output, dim=1)
        return torch.stack([1.0 - p[:, 0], p[:, NCR] + p[:, ET], p[:, ET]], dim=1)
    if output_kind == "cunet":
        if not isinstance(output, CUNetOutput):
            raise ModelError(
                f"output kind 'cunet' needs a CUNetOutput, got {type(output).__name__}"
            )
        _check_channels(output.branch1, 2, "cunet branch1")
        _check_channels(output.branch2, 4, "cunet branch2")
        wt = torch.softmax(output.branch1, dim=1)[:, 1]
        # Softmax over the tumour channels (internal labels NCR, ED, ET = 1, 2, 3) only.
        q = torch.softmax(output.branch2[:, NCR : ET + 1], dim=1)
        q_ncr, q_et = q[:, NCR - NCR], q[:, ET - NCR]
        tc = wt * (q_ncr + q_et)
        et = wt * q_et
        return torch.stack([wt, tc, et], dim=1)
    raise ModelError(f"unknown output kind {output_kind!r} (known: regions, labels, cunet, bfcn)")


def _check_channels(x: Any, channels: int, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 3 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ModelError(f"output kind {what!r} needs {channels} channels, got {shape}")


def count_parameters(model: nn.Module, *, training: bool) -> int:
    """Number of parameters (elements) of ``model``.

    ``training=False`` leaves out the modules used only in training mode, as named by the
    model's ``training_only_modules()`` (two_stage: the interpolation decoder; cunet: the 8
    auxiliary heads).
    """
    params = {id(p): p.numel() for p in model.parameters()}
    if not training:
        training_only = getattr(model, "training_only_modules", None)
        for module in training_only() if callable(training_only) else []:
            for p in module.parameters():
                params.pop(id(p), None)
    return sum(params.values())
