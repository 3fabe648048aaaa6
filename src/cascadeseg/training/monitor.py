"""Checks the papers' training procedures need (the validation values are in
:mod:`cascadeseg.training.validation`).

* :func:`lws_coverage` / :func:`warn_lws_coverage`: CU-Net's condition ``beta * p2 * epoch >= 1``
  (sec. 2.2), under which every normal-brain pixel is expected to enter the loss at least once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cascadeseg.config import Config
from cascadeseg.losses.lws import lws_probabilities, lws_regions, region_counts
from cascadeseg.models import network_spec


def lws_coverage(beta: float, p2: float, passes: float) -> float:
    """``beta * p2 * passes``: CU-Net sec. 2.2 asks for ``beta * p2 * epoch >= 1`` so that every
    normal-brain pixel is expected to enter the loss at least once (``passes``: full passes over
    the training slices, the paper's epochs)."""
    return beta * p2 * passes


def estimate_p2(cases: Sequence[Any], *, beta: float, contour_width: int) -> float:
    """U-Net 1's normal-brain sampling probability ``p2`` (Eq. 3) over the training ``cases``.

    Counts the regions S2 and S3 (:func:`cascadeseg.losses.lws.lws_regions`, axial slices) over
    all cases at once: the batch-wise ``p2`` of training varies around this value.
    """
    counts = torch.zeros(4, dtype=torch.float64)
    for case in cases:
        label = torch.from_numpy(np.array(case.label, dtype=np.int64)).permute(2, 0, 1)
        brain = torch.from_numpy(np.array(case.brain_mask, dtype=bool)).permute(2, 0, 1)
        regions = lws_regions(label, brain, contour_width)
        counts += region_counts(regions).sum(dim=0).double()
    return lws_probabilities(counts.tolist(), net=1, beta=beta)[1]


def warn_lws_coverage(cfg: Config, train_cases: Sequence[Any], passes: float) -> float | None:
    """Warn (``UserWarning``) when a run with loss weighted sampling breaks
    ``beta * p2 * epoch >= 1``; returns the coverage (``None`` when LWS is off or unused).

    Args:
        cfg: the recipe (``loss.lws``, ``loss.lws_beta``, ``loss.contour_width``, the model).
        train_cases: preprocessed training cases with ``label`` and ``brain_mask``.
        passes: full passes over the training slices the run will make.
    """
    kind = network_spec(cfg.model.name).output_kind
    if not cfg.loss.lws or kind not in ("cunet", "labels"):
        return None
    beta = cfg.loss.lws_beta
    p2 = estimate_p2(train_cases, beta=beta, contour_width=cfg.loss.contour_width)
    coverage = lws_coverage(beta, p2, passes)
    if coverage < 1.0:
        warnings.warn(
            f"loss weighted sampling: beta * p2 * epochs = {beta:g} * {p2:.3g} * {passes:.3g} = "
            f"{coverage:.3g} < 1 (CU-Net sec. 2.2): some normal-brain pixels are expected never "
            "to enter the loss; train longer or raise loss.lws_beta",
            UserWarning,
            stacklevel=2,
        )
    return coverage
