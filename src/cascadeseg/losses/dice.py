"""Region soft Dice loss of the two-stage cascaded U-Net (Jiang et al. 2019, sec. 2.4, Eq. 2).

The paper's Eq. 2 defines, for one region,

    L_dice = 2 * sum(S * R) / (sum(S^2) + sum(R^2) + eps)

with ``S`` the network's sigmoid output and ``R`` the binary ground truth. Read literally that is
the soft Dice *coefficient*, a quantity to maximise; the paper trains by minimising "the Dice
loss", so we minimise ``1 - L_dice`` per region (Milletari et al.'s V-Net loss and MONAI's
``DiceLoss`` use the same ``1 - dice`` form; its gradient is the negated gradient of Eq. 2). The
three overlapping regions ``[WT, TC, ET]`` are learnt directly and their losses are added
("simply add the Dice loss functions of each region together"), so a perfect prediction scores 0
and the worst scores 3.

The sums of Eq. 2 run over the voxels of each sample separately and the per-sample losses are
averaged over the batch (MONAI ``DiceLoss(batch=False)``, the default; nnU-Net's ``batch_dice``
pools the sums over the batch instead and is available here as ``batch_dice=True``). With the
paper's batch size of 1 the two are identical.

Note on empty regions: with ``eps`` in the denominator only (as in Eq. 2), a region absent from the
ground truth has Dice 0 whatever the prediction, i.e. a constant loss of 1 and no gradient. That is
the paper's loss and stays the default; ``smooth_nr > 0`` adds a numerator term as MONAI does
(``smooth_nr = smooth_dr = 1e-5``), which makes an empty region predicted empty score Dice 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def soft_dice_per_region(
    probs: Tensor,
    target: Tensor,
    eps: float = 1e-5,
    *,
    smooth_nr: float = 0.0,
    batch_dice: bool = False,
) -> Tensor:
    """Soft Dice with squared denominators (two-stage paper Eq. 2) for every sample and region.

    Args:
        probs: ``(B, R, ...)`` probabilities in [0, 1] (sigmoid outputs; R = 3 regions
            ``[WT, TC, ET]``), any number of spatial dimensions.
        target: ``(B, R, ...)`` binary (0/1) float targets of the same shape.
        eps: added to the denominator (Eq. 2's epsilon).
        smooth_nr: added to the numerator (0 in the paper; MONAI uses 1e-5).
        batch_dice: pool the sums over the batch (nnU-Net ``batch_dice``) instead of per sample.

    Returns:
        ``(B, R)`` Dice coefficients (``(1, R)`` with ``batch_dice``), computed in float32.
    """
    if probs.shape != target.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target.shape)} differ")
    if probs.ndim < 3:
        raise ValueError(f"expected (B, R, ...) tensors, got shape {tuple(probs.shape)}")
    probs = probs.float()
    target = target.float()
    # Sum over the spatial axes; with batch_dice also over the batch axis (kept as size 1).
    dims: tuple[int, ...] = tuple(range(2, probs.ndim))
    if batch_dice:
        dims = (0, *dims)
    intersection = (probs * target).sum(dim=dims, keepdim=False)
    denominator = (probs * probs).sum(dim=dims) + (target * target).sum(dim=dims)
    dice = (2.0 * intersection + smooth_nr) / (denominator + eps)
    return dice.reshape(-1, probs.shape[1])


def region_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    eps: float = 1e-5,
    smooth_nr: float = 0.0,
    batch_dice: bool = False,
    region_weights: Sequence[float] | None = None,
) -> Tensor:
    """Sum over regions of ``1 - soft Dice`` (two-stage paper Eq. 2), averaged over the batch.

    Always evaluated in float32, also under autocast (the squared sums of a 128^3 crop overflow
    fp16 and lose precision in bf16).

    Args:
        logits: ``(B, 3, X, Y, Z)`` (or ``(B, 3, H, W)``) region logits ``[WT, TC, ET]``; the
            sigmoid is applied here.
        target: ``(B, 3, ...)`` binary float region masks ``[WT, TC, ET]`` of the same shape.
        eps: denominator epsilon of Eq. 2.
        smooth_nr: numerator smoothing (see the module docstring; 0 = the paper).
        batch_dice: pool the Dice sums over the batch instead of per sample.
        region_weights: one factor per region multiplying its ``1 - Dice`` term (``None``: all 1,
            the paper's plain sum).

    Returns:
        Scalar loss in ``[0, sum(region_weights)]`` (0 = perfect).
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probs = torch.sigmoid(logits.float())
        dice = soft_dice_per_region(probs, target, eps, smooth_nr=smooth_nr, batch_dice=batch_dice)
        return weighted_region_sum(1.0 - dice, region_weights).mean()


def weighted_region_sum(per_region: Tensor, region_weights: Sequence[float] | None) -> Tensor:
    """``(B, R)`` per-region losses summed over regions, each times its weight: ``(B,)``.

    ``None`` sums them plainly; otherwise ``region_weights`` must hold ``R`` numbers.
    """
    if region_weights is None:
        return per_region.sum(dim=1)
    if len(region_weights) != per_region.shape[1]:
        raise ValueError(f"{len(region_weights)} region weights for {per_region.shape[1]} regions")
    weights = torch.as_tensor(region_weights, dtype=per_region.dtype, device=per_region.device)
    return (per_region * weights).sum(dim=1)
