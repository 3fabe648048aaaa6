"""Checks and validation values the papers' training procedures need beyond the region Dice.

* :func:`validation_objective`: the training loss itself (for CU-Net its Eq. 4, branch and
  auxiliary terms included) on the validation cases, which ``train.monitor: objective`` makes the
  early-stopping signal (CU-Net sec. 3.2: "until there is an obvious uptrend in the validation
  loss").
* :func:`lws_coverage` / :func:`warn_lws_coverage`: CU-Net's condition ``beta * p2 * epoch >= 1``
  (sec. 2.2), under which every normal-brain pixel is expected to enter the loss at least once.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cascadeseg.config import Config
from cascadeseg.losses.lws import lws_probabilities, lws_regions, region_counts
from cascadeseg.models import network_spec
from cascadeseg.training import distributed as dist_utils
from cascadeseg.training.distributed import DistInfo


def _forward_with_aux(model: nn.Module) -> Any:
    """``x -> model(x)`` with its auxiliary (training-only) outputs where it has an ``aux``
    switch (CU-Net), computed in eval mode (BatchNorm running statistics, no dropout); the
    switch is looked up once per model, not per batch."""
    if "aux" in inspect.signature(model.forward).parameters:
        return lambda x: model(x, aux=True)
    return model


@torch.no_grad()
def validation_objective(
    model: nn.Module,
    loss_fn: Any,
    cases: Sequence[Any],
    cfg: Config,
    info: DistInfo,
    *,
    epoch: float,
    slice_batch: int = 16,
) -> float:
    """Mean training loss over the validation ``cases`` (shared out over ranks).

    2D models: the axial slices holding brain, in batches of ``slice_batch`` (the loss's sampling,
    e.g. LWS, is drawn per batch as in training); the mean is weighted by the slices of each
    batch. 3D models: one forward of each whole volume. Random sampling in the loss is drawn from
    a generator seeded by ``cfg.seed``, so the value does not depend on the training RNG state and
    does not change it. ``epoch`` sets epoch-dependent weights (CU-Net's auxiliary weight).
    """
    from cascadeseg.inference.predictor import slice_stack
    from cascadeseg.training.trainer import to_float32

    plain = dist_utils.unwrap_model(model)
    plain.eval()
    forward = _forward_with_aux(plain)
    device = info.device
    sums = torch.zeros(2, dtype=torch.float64)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(cfg.seed)
        for i, case in enumerate(cases):
            if i % info.world_size != info.rank:
                continue
            # Copies: cached arrays are read-only memory maps.
            label = torch.from_numpy(np.array(case.label, dtype=np.int64))
            brain = torch.from_numpy(np.array(case.brain_mask, dtype=bool)) | (label > 0)
            if plain.spatial_dims == 3:
                x = torch.from_numpy(np.array(case.image, dtype=np.float32))[None].to(device)
                batch = {"label": label[None].to(device), "brain_mask": brain[None].to(device)}
                total, _ = loss_fn(to_float32(forward(x)), batch, epoch=epoch)
                sums += torch.tensor([float(total), 1.0], dtype=torch.float64)
                continue
            kept = [z for z in range(label.shape[-1]) if bool(brain[..., z].any())]
            for start in range(0, len(kept), slice_batch):
                zs = kept[start : start + slice_batch]
                stack = np.concatenate(
                    [slice_stack(case.image, z, z + 1, cfg.data.slice_context) for z in zs]
                )
                batch = {
                    "label": label[..., zs].permute(2, 0, 1).contiguous().to(device),
                    "brain_mask": brain[..., zs].permute(2, 0, 1).contiguous().to(device),
                }
                out = forward(torch.from_numpy(stack).to(device))
                total, _ = loss_fn(to_float32(out), batch, epoch=epoch)
                sums += torch.tensor([float(total) * len(zs), float(len(zs))], dtype=torch.float64)
    if info.distributed:
        sums = dist_utils.all_reduce_sum(sums.to(device), info).cpu()
    return float(sums[0] / max(1.0, float(sums[1])))


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
