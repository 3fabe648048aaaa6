"""Losses: region soft Dice, loss-weighted-sampling cross-entropy, deep supervision.

- :mod:`.dice`: region soft Dice of the two-stage paper (Eq. 2), ``[WT, TC, ET]`` on sigmoids.
- :mod:`.lws`: CU-Net loss weighted sampling (Eqs. 1-3): regions, probabilities, sample matrix,
  weighted cross-entropy.
- :mod:`.composite`: whole-model losses called by the trainer, one per trainable output kind
  (:data:`LOSS_FOR_KIND`, filled by :func:`register_loss`), and :func:`build_loss`.
"""

from __future__ import annotations

from cascadeseg.losses.composite import (
    LOSS_FOR_KIND,
    BFCNLoss,
    CUNetLoss,
    LabelCELoss,
    Loss,
    RegionDiceLoss,
    TwoStageLoss,
    build_loss,
    label_boundaries,
    regions_from_label,
    register_loss,
)
from cascadeseg.losses.dice import region_dice_loss, soft_dice_per_region
from cascadeseg.losses.lws import (
    contour_band,
    lws_probabilities,
    lws_regions,
    lws_weights,
    sample_weights,
    weighted_cross_entropy,
)

__all__ = [
    "LOSS_FOR_KIND",
    "BFCNLoss",
    "CUNetLoss",
    "LabelCELoss",
    "Loss",
    "RegionDiceLoss",
    "TwoStageLoss",
    "build_loss",
    "contour_band",
    "label_boundaries",
    "lws_probabilities",
    "lws_regions",
    "lws_weights",
    "region_dice_loss",
    "regions_from_label",
    "register_loss",
    "sample_weights",
    "soft_dice_per_region",
    "weighted_cross_entropy",
]
