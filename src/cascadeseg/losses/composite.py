"""Whole-model losses: what the trainer calls, one per model output kind.

Every loss is called as ``loss(output, batch, aux_weight=w) -> (total, parts)``:

- ``output``: the model's train-mode output (a tensor, a ``TwoStageOutput``, a ``CUNetOutput`` or a
  ``BFCNOutput``; read by their attributes).
- ``batch``: dict with ``"label"`` ``(B, ...)`` int64 internal labels, ``"regions"`` ``(B, 3, ...)``
  float ``[WT, TC, ET]`` masks (3D datasets; derived from ``"label"`` when absent) and
  ``"brain_mask"`` ``(B, ...)`` bool (2D; the whole image counts as brain when absent).
- ``aux_weight``: the weight of the auxiliary losses for this call (CU-Net's Eq. 4 omega; the
  other losses have no auxiliary outputs and ignore it). The losses hold no schedule: the trainer
  computes the epoch's value (``cascadeseg.training.schedules.aux_weight_at`` from
  ``loss.aux_weight``, ``loss.aux_decay``, ``loss.aux_decay_every``, ``loss.aux_min``) and
  passes it; ``None`` (the default) is the loss's own ``aux_weight``, the recipe's
  ``loss.aux_weight`` (the value of epoch 0).
- ``total``: scalar tensor to back-propagate; ``parts``: named float values for logging, named
  for what they hold: ``total`` (the loss back-propagated), ``loss_<component>`` (the whole
  loss of one output, e.g. ``loss_stage1``: its Dice plus any cross-entropy term, not a Dice
  score) and other quantities by their own name (``aux_weight``). The trainer logs them as
  ``train_<name>`` columns of ``metrics.csv``.

:func:`build_loss` picks the loss from ``model.output_kind`` and a :class:`LossConfig`: each kind
of :data:`cascadeseg.models.outputs.OUTPUT_KINDS` that can be trained has one builder in
:data:`LOSS_FOR_KIND`, registered next to its loss class with :func:`register_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from cascadeseg.config import LossConfig
from cascadeseg.data.labels import NUM_CLASSES, REGION_LABELS
from cascadeseg.errors import ModelError
from cascadeseg.losses.dice import region_dice_loss, weighted_region_sum
from cascadeseg.losses.lws import lws_regions, sample_weights, weighted_cross_entropy
from cascadeseg.models.protocol import SegmentationNetwork

Batch = dict[str, Tensor]


class Loss(Protocol):
    """A whole-model loss: ``loss(output, batch, aux_weight=w) -> (total, parts)`` (module
    docstring)."""

    def __call__(
        self, output: Any, batch: Batch, *, aux_weight: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """``total``: scalar to back-propagate; ``parts``: named floats for logging."""
        ...


LossBuilder = Callable[[LossConfig], Loss]

#: The loss builder of each trainable output kind (``model.output_kind`` -> builder).
LOSS_FOR_KIND: dict[str, LossBuilder] = {}


def register_loss(output_kind: str) -> Callable[[LossBuilder], LossBuilder]:
    """Function decorator: the builder of the loss of networks with ``output_kind``.

    Raises:
        ValueError: a builder is already registered for ``output_kind``.
    """

    def decorate(builder: LossBuilder) -> LossBuilder:
        known = LOSS_FOR_KIND.get(output_kind)
        if known is not None and known is not builder:
            raise ValueError(f"a loss is already registered for output kind {output_kind!r}")
        LOSS_FOR_KIND[output_kind] = builder
        return builder

    return decorate


def regions_from_label(label: Tensor) -> Tensor:
    """``(B, 3, ...)`` float ``[WT, TC, ET]`` masks from ``(B, ...)`` internal labels.

    Uses :data:`cascadeseg.data.labels.REGION_LABELS`, the one definition of the regions.
    """
    channels = [
        torch.isin(label, torch.tensor(members, device=label.device, dtype=label.dtype))
        for members in REGION_LABELS
    ]
    return torch.stack(channels, dim=1).float()


def _region_target(batch: Batch) -> Tensor:
    if "regions" in batch:
        return batch["regions"].float()
    return regions_from_label(batch["label"])


def _brain_mask(batch: Batch) -> Tensor:
    label = batch["label"]
    if "brain_mask" in batch:
        return batch["brain_mask"].bool()
    return torch.ones(label.shape, dtype=torch.bool, device=label.device)


class RegionDiceLoss:
    """Region soft Dice (two-stage Eq. 2) for models with one ``(B, 3, ...)`` region output."""

    def __init__(self, *, eps: float = 1e-5) -> None:
        self.eps = eps

    def __call__(
        self, output: Tensor, batch: Batch, *, aux_weight: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        loss = region_dice_loss(output, _region_target(batch), eps=self.eps)
        return loss, {"total": float(loss.detach())}


class TwoStageLoss:
    """Two-stage cascaded U-Net loss (Jiang et al. 2019, sec. 2.4).

    ``total = L(stage1) + L(stage2) + interp_decoder_weight * L(stage2_interp)``, where ``L`` is
    the sum over ``[WT, TC, ET]`` of ``1 - soft Dice`` against the same target ("we also add the
    loss of each stage together"). A plain ``(B, 3, ...)`` tensor output (eval mode, ``unet3d``)
    gets ``L`` alone.

    The defaults are the paper's loss. Two documented departures exist for short CPU runs on small
    crops, where many crops hold no tumour and the paper's Dice (no numerator smoothing) gives no
    gradient against false positives there, so the network over-segments: ``smooth_nr`` with
    ``batch_dice`` (MONAI's / nnU-Net's smoothed batch Dice) and ``bce_weight`` (a region-wise
    binary cross-entropy added to each Dice term, as nnU-Net adds cross-entropy to Dice).

    Args:
        interp_decoder_weight: weight of the training-only interpolation decoder's loss (paper: 1).
        eps: Dice denominator epsilon (smoothing of the denominator).
        smooth_nr: Dice numerator smoothing (paper: 0).
        batch_dice: pool the Dice sums over the batch (paper: per sample).
        bce_weight: weight of the added binary cross-entropy (paper: 0).
        region_weights: factors of the ``[WT, TC, ET]`` terms, Dice and cross-entropy alike
            (paper: all 1, a plain sum; ``None`` = all 1).
    """

    def __init__(
        self,
        interp_decoder_weight: float = 1.0,
        eps: float = 1e-5,
        *,
        smooth_nr: float = 0.0,
        batch_dice: bool = False,
        bce_weight: float = 0.0,
        region_weights: Sequence[float] | None = None,
    ) -> None:
        self.interp_decoder_weight = interp_decoder_weight
        self.region_weights = None if region_weights is None else tuple(region_weights)
        self.eps = eps
        self.smooth_nr = smooth_nr
        self.batch_dice = batch_dice
        self.bce_weight = bce_weight

    def region_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of one ``(B, 3, ...)`` region-logit output against ``(B, 3, ...)`` targets."""
        loss = region_dice_loss(
            logits,
            target,
            eps=self.eps,
            smooth_nr=self.smooth_nr,
            batch_dice=self.batch_dice,
            region_weights=self.region_weights,
        )
        if self.bce_weight:
            # Summed over the three regions like the Dice term, averaged over voxels; fp32.
            bce = F.binary_cross_entropy_with_logits(
                logits.float(), target.float(), reduction="none"
            )
            per_region = bce.mean(dim=tuple(range(2, bce.ndim)))
            bce_sum = weighted_region_sum(per_region, self.region_weights).mean()
            loss = loss + self.bce_weight * bce_sum
        return loss

    def __call__(
        self, output: Any, batch: Batch, *, aux_weight: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        target = _region_target(batch)
        if not hasattr(output, "stage2"):
            loss = self.region_loss(output, target)
            return loss, {"total": float(loss.detach())}
        stage1 = self.region_loss(output.stage1, target)
        stage2 = self.region_loss(output.stage2, target)
        total = stage1 + stage2
        parts = {"loss_stage1": float(stage1.detach()), "loss_stage2": float(stage2.detach())}
        interp_out = getattr(output, "stage2_interp", None)
        if interp_out is not None and self.interp_decoder_weight != 0:
            interp = self.region_loss(interp_out, target)
            total = total + self.interp_decoder_weight * interp
            parts["loss_stage2_interp"] = float(interp.detach())
        parts["total"] = float(total.detach())
        return total, parts


@register_loss("regions")
def _regions_loss(loss_cfg: LossConfig) -> TwoStageLoss:
    """:class:`TwoStageLoss`: reduces to the region Dice for a plain tensor output, so it serves
    ``two_stage`` and ``unet3d``."""
    return TwoStageLoss(
        interp_decoder_weight=loss_cfg.interp_decoder_weight,
        eps=loss_cfg.dice_eps,
        smooth_nr=loss_cfg.dice_smooth_nr,
        batch_dice=loss_cfg.dice_batch,
        bce_weight=loss_cfg.bce_weight,
        region_weights=loss_cfg.region_weights,
    )


def sample_matrices(
    label: Tensor,
    brain_mask: Tensor,
    *,
    nets: Sequence[tuple[int, float]],
    lws: bool,
    beta: float,
    contour_width: int,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """CU-Net sample matrices ``W`` (Eqs. 1-3), one ``(B, H, W)`` float tensor per ``nets`` entry.

    Args:
        label: ``(B, H, W)`` internal labels 0-3.
        brain_mask: ``(B, H, W)`` bool brain mask.
        nets: ``(net, alpha)`` pairs: which U-Net's sampling (1: brain and tumour, 2: tumour and
            contour only) with which contour weight; drawn in this order from ``generator``.
        lws: ``False``: every brain (or tumour) pixel weighs 1 for every net (only ``p1 = 0``).
        beta: Eq. 3 balance of brain vs tumour samples.
        contour_width: width of the contour band S4 (pixels).
        per_sample: count the regions per slice instead of per batch.
        generator: random source of the sampling.
    """
    if not lws:
        brain = (brain_mask | (label > 0)).float()
        return [brain for _ in nets]
    # The regions (and their morphology) are computed once for all nets.
    regions = lws_regions(label, brain_mask, contour_width)
    return [
        sample_weights(
            regions,
            net=net,
            alpha=alpha,
            beta=beta,
            generator=generator,
            per_sample=per_sample,
        )
        for net, alpha in nets
    ]


class _SampledLoss:
    """Shared by the losses with CU-Net's sampling: their settings draw the sample matrices."""

    lws: bool
    beta: float
    contour_width: int
    per_sample: bool
    generator: torch.Generator | None

    def sample(
        self, label: Tensor, brain_mask: Tensor, nets: Sequence[tuple[int, float]]
    ) -> list[Tensor]:
        """:func:`sample_matrices` of ``nets`` with this loss's settings."""
        return sample_matrices(
            label,
            brain_mask,
            nets=nets,
            lws=self.lws,
            beta=self.beta,
            contour_width=self.contour_width,
            per_sample=self.per_sample,
            generator=self.generator,
        )


class CUNetLoss(_SampledLoss):
    """CU-Net deep-supervision loss with loss weighted sampling (Liu et al. 2017, Eq. 4).

    ``total = L1 + L2 + aux_weight * sum_{i=1..8} La_i`` (``aux_weight`` is Eq. 4's omega, given
    to each call by the trainer from its schedule; the regulariser ``lambda * psi`` of Eq. 4 is
    the optimiser's weight decay). ``L1`` and aux 1-4 are U-Net 1's weighted
    cross-entropies (Eq. 1) against whole tumour vs rest (2 classes), sampled with U-Net 1's
    probabilities (Eq. 3, contour weight ``alpha``); ``L2`` and aux 5-8 are U-Net 2's against the
    internal labels 0-3, sampled from tumour and contour only (``p1 = p2 = 0``, ``alpha_2 = 1``).
    One sample matrix per U-Net is drawn per call and shared by its branch and auxiliary losses.

    With ``lws=False`` ("CUN" without LWS in the paper's Table 1) every brain pixel has weight 1
    for both U-Nets (only ``p1 = 0`` is kept: the non-brain mask is merged at test time anyway).

    Auxiliary outputs are assigned to a U-Net by their channel count (2: U-Net 1, 4: U-Net 2).

    Args:
        alpha: U-Net 1's contour weight (paper: 2).
        beta: Eq. 3 balance of brain vs tumour samples (paper: 1.5).
        contour_width: width of the contour band S4 in pixels (paper: about 10).
        lws: loss weighted sampling on/off.
        aux_weight: auxiliary weight of a call that gives none: the recipe's ``loss.aux_weight``,
            Eq. 4's omega at epoch 0 (paper: 0.1).
        unet2_alpha: U-Net 2's contour weight (paper: alpha_2 = 1).
        per_sample: count LWS regions per slice instead of per batch (see ``losses.lws``).
        generator: random source of the sampling (``None``: torch's global generator).
    """

    def __init__(
        self,
        *,
        alpha: float = 2.0,
        beta: float = 1.5,
        contour_width: int = 10,
        lws: bool = True,
        aux_weight: float = 0.1,
        unet2_alpha: float = 1.0,
        per_sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.alpha = alpha
        self.beta = beta
        self.contour_width = contour_width
        self.lws = lws
        self.aux_weight = aux_weight
        self.unet2_alpha = unet2_alpha
        self.per_sample = per_sample
        self.generator = generator

    def weights(self, label: Tensor, brain_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(W1, W2)``: ``(B, H, W)`` float sample matrices of U-Net 1 and U-Net 2."""
        w1, w2 = self.sample(label, brain_mask, ((1, self.alpha), (2, self.unet2_alpha)))
        return w1, w2

    def __call__(
        self, output: Any, batch: Batch, *, aux_weight: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        label = batch["label"].long()
        w1, w2 = self.weights(label, _brain_mask(batch))
        whole_tumour = (label > 0).long()
        l1 = weighted_cross_entropy(output.branch1, whole_tumour, w1)
        l2 = weighted_cross_entropy(output.branch2, label, w2)
        total = l1 + l2
        parts = {"loss_branch1": float(l1.detach()), "loss_branch2": float(l2.detach())}
        aux_outputs = tuple(getattr(output, "aux", ()) or ())
        if aux_outputs:
            aux_losses = []
            for index, aux in enumerate(aux_outputs, start=1):
                if aux.shape[1] == 2:
                    aux_losses.append(weighted_cross_entropy(aux, whole_tumour, w1))
                elif aux.shape[1] == NUM_CLASSES:
                    aux_losses.append(weighted_cross_entropy(aux, label, w2))
                else:
                    raise ModelError(
                        f"CU-Net auxiliary output {index} has {aux.shape[1]} channels "
                        f"(expected 2 for U-Net 1 or {NUM_CLASSES} for U-Net 2)"
                    )
            aux_sum = torch.stack(aux_losses).sum()
            if aux_weight is None:
                aux_weight = self.aux_weight
            total = total + aux_weight * aux_sum
            parts["loss_aux"] = float(aux_sum.detach())
            parts["aux_weight"] = aux_weight
        parts["total"] = float(total.detach())
        return total, parts


@register_loss("cunet")
def _cunet_loss(loss_cfg: LossConfig) -> CUNetLoss:
    """:class:`CUNetLoss` with the recipe's LWS and auxiliary-weight settings."""
    return CUNetLoss(
        alpha=loss_cfg.lws_alpha,
        beta=loss_cfg.lws_beta,
        contour_width=loss_cfg.contour_width,
        lws=loss_cfg.lws,
        aux_weight=loss_cfg.aux_weight,
    )


class LabelCELoss(_SampledLoss):
    """Cross-entropy over internal labels for ``unet2d`` (``(B, 4, H, W)`` logits).

    With ``lws=False``: every brain pixel weighs 1 (non-brain is excluded as in CU-Net, ``p1 = 0``).
    With ``lws=True``: U-Net 1's sampling (Eqs. 2-3: brain sampled to ``beta`` times the tumour,
    contour weighted ``alpha``), applied to the 4-class target.
    """

    def __init__(
        self,
        *,
        lws: bool = False,
        alpha: float = 2.0,
        beta: float = 1.5,
        contour_width: int = 10,
        per_sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.lws = lws
        self.alpha = alpha
        self.beta = beta
        self.contour_width = contour_width
        self.per_sample = per_sample
        self.generator = generator

    def __call__(
        self, output: Tensor, batch: Batch, *, aux_weight: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        label = batch["label"].long()
        (weights,) = self.sample(label, _brain_mask(batch), ((1, self.alpha),))
        loss = weighted_cross_entropy(output, label, weights)
        return loss, {"total": float(loss.detach())}


@register_loss("labels")
def _labels_loss(loss_cfg: LossConfig) -> LabelCELoss:
    """:class:`LabelCELoss` (LWS as ``loss_cfg.lws``): ``unet2d``, ``drn``."""
    return LabelCELoss(
        lws=loss_cfg.lws,
        alpha=loss_cfg.lws_alpha,
        beta=loss_cfg.lws_beta,
        contour_width=loss_cfg.contour_width,
    )


def label_boundaries(label: Tensor, width: int = 2) -> Tensor:
    """``(B, H, W)`` int64 boundary map (1 = boundary) of a ``(B, H, W)`` internal label map.

    A pixel is a boundary pixel when its ``(width + 1) x (width + 1)`` neighbourhood (inside the
    image) holds more than one label, so a straight edge between two labels gets a band
    ``width`` pixels wide, half on each side; every label change counts (tumour vs background
    and between the substructures). BFCN's boundary target (Shen et al. 2017); max pooling of
    the labels and of their negation gives the neighbourhood's largest and smallest label.

    Raises:
        ValueError: ``width`` is not a positive even number.
    """
    if width < 2 or width % 2:
        raise ValueError(f"boundary width must be a positive even number, got {width}")
    x = label.float().unsqueeze(1)
    # max_pool2d pads with -inf, so the image border is not a boundary.
    high = F.max_pool2d(x, width + 1, stride=1, padding=width // 2)
    low = -F.max_pool2d(-x, width + 1, stride=1, padding=width // 2)
    return (high != low).squeeze(1).long()


class BFCNLoss:
    """BFCN loss (Shen et al. 2017): tissue, boundary and fused cross-entropies.

    ``total = CE(tissue) + boundary_weight * CE(boundary) + CE(fused)``, each
    :func:`cascadeseg.losses.lws.weighted_cross_entropy` over the brain (non-brain excluded, as
    for the other 2D models of the CU-Net comparison); the boundary target is
    :func:`label_boundaries` of the label map, ``boundary_width`` pixels wide.
    """

    def __init__(self, *, boundary_weight: float = 1.0, boundary_width: int = 2) -> None:
        if boundary_width < 2 or boundary_width % 2:
            raise ModelError(
                f"loss.boundary_width={boundary_width}: must be a positive even number"
            )
        self.boundary_weight = boundary_weight
        self.boundary_width = boundary_width

    def __call__(
        self, output: Any, batch: Batch, *, aux_weight: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        label = batch["label"].long()
        weights = (_brain_mask(batch) | (label > 0)).float()
        boundary = label_boundaries(label, self.boundary_width)
        tissue = weighted_cross_entropy(output.tissue, label, weights)
        edge = weighted_cross_entropy(output.boundary, boundary, weights)
        fused = weighted_cross_entropy(output.fused, label, weights)
        total = tissue + self.boundary_weight * edge + fused
        parts = {
            "loss_tissue": float(tissue.detach()),
            "loss_boundary": float(edge.detach()),
            "loss_fused": float(fused.detach()),
            "total": float(total.detach()),
        }
        return total, parts


@register_loss("bfcn")
def _bfcn_loss(loss_cfg: LossConfig) -> BFCNLoss:
    """:class:`BFCNLoss` with the recipe's boundary weight and width."""
    return BFCNLoss(
        boundary_weight=loss_cfg.boundary_weight, boundary_width=loss_cfg.boundary_width
    )


def build_loss(model: SegmentationNetwork, loss_cfg: LossConfig) -> Loss:
    """The loss for ``model`` (the builder of ``model.output_kind`` in :data:`LOSS_FOR_KIND`)
    configured by ``loss_cfg``.

    ``"regions"`` -> :class:`TwoStageLoss`; ``"cunet"`` -> :class:`CUNetLoss`; ``"labels"`` ->
    :class:`LabelCELoss`; ``"bfcn"`` -> :class:`BFCNLoss`.

    Raises:
        ModelError: no loss is registered for the model's ``output_kind``.
    """
    builder = LOSS_FOR_KIND.get(model.output_kind)
    if builder is None:
        raise ModelError(
            f"model {type(model).__name__} has output_kind {model.output_kind!r}, which has no "
            f"loss; expected one of {', '.join(repr(k) for k in LOSS_FOR_KIND)}"
        )
    return builder(loss_cfg)
