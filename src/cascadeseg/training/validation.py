"""Validation during training, on whole preprocessed validation volumes.

* :func:`validate`: per-region Dice ``[WT, TC, ET]`` and a soft-Dice validation loss. The
  probabilities come from the predictor's single-volume function
  (:func:`cascadeseg.inference.volume.predict_volume`: 3D, the whole volume in one forward, a
  sliding window only if it runs out of memory; 2D, slice by slice) and the scores from
  :mod:`cascadeseg.evaluation.metrics`.
* :func:`validation_objective`: the training loss itself (for CU-Net its Eq. 4, branch and
  auxiliary terms included) on the validation cases, which ``train.monitor: objective`` makes the
  early-stopping signal (CU-Net sec. 3.2: "until there is an obvious uptrend in the validation
  loss").
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cascadeseg.config import Config
from cascadeseg.data.labels import REGIONS, label_to_regions
from cascadeseg.data.missing import model_missing_fill, with_availability
from cascadeseg.evaluation.metrics import region_dice, soft_region_dice
from cascadeseg.inference.volume import predict_volume, slice_stack
from cascadeseg.runtime import resolve_precision, to_float32
from cascadeseg.training import distributed as dist_utils
from cascadeseg.training.distributed import DistInfo


def validate(
    model: nn.Module,
    cases: Sequence[Any],
    cfg: Config,
    info: DistInfo,
    *,
    precision: str | None = None,
) -> dict[str, float]:
    """Mean per-region Dice and soft-Dice loss over ``cases`` (shared out over ranks).

    Predictions are thresholded at ``inference.threshold`` and restricted to the brain mask
    (CU-Net merges the non-brain mask into its predictions, sec. 2.2; harmless for the others).
    The validation loss is ``1 - mean over regions`` of the soft Dice with squared denominators
    (:func:`~cascadeseg.evaluation.metrics.soft_region_dice`): the papers define no validation
    loss for early stopping; this one (Eq. 2 of the two-stage paper on probabilities) is
    deterministic, model-agnostic and follows the evaluation metric. The model is left in eval
    mode.

    Args:
        model: the model being trained (DDP and ``torch.compile`` wrappers are looked through).
        cases: preprocessed cases with ``image`` ``(4, X, Y, Z)``, ``label`` and, where known,
            ``brain_mask``.
        cfg: the recipe (``train.precision``, ``data.slice_context``, ``data.patch_size``,
            ``inference.threshold``).
        info: this process's rank, world size and device.
        precision: autocast precision (default: ``train.precision`` resolved for the device).

    Returns:
        ``{"val_loss", "dice_WT", "dice_TC", "dice_ET", "dice_mean", "val_cases"}``.
    """
    plain = dist_utils.unwrap_model(model)
    plain.eval()
    precision = precision or resolve_precision(cfg.train.precision, info.device)
    sums = torch.zeros(5, dtype=torch.float64)
    for i, case in enumerate(cases):
        if i % info.world_size != info.rank:
            continue
        probs = predict_volume(
            plain,
            case.image,
            device=info.device,
            precision=precision,
            slice_context=cfg.data.slice_context,
            roi_size=cfg.data.patch_size,
            missing_fill=model_missing_fill(cfg.data.sequence_dropout, cfg.data.missing_fill),
        )
        mask = getattr(case, "brain_mask", None)
        if mask is not None:
            probs = probs * np.asarray(mask, dtype=np.float32)[None]
        ref = label_to_regions(case.label)
        dice = region_dice(probs >= cfg.inference.threshold, ref)
        loss = float(1.0 - soft_region_dice(probs, ref).mean())
        sums += torch.tensor([loss, *dice, 1.0], dtype=torch.float64)
    if info.distributed:
        sums = dist_utils.all_reduce_sum(sums.to(info.device), info).cpu()
    n = max(1.0, float(sums[4]))
    dice_means = (sums[1:4] / n).tolist()
    result = {"val_loss": float(sums[0] / n)}
    for name, value in zip(REGIONS, dice_means):
        result[f"dice_{name}"] = float(value)
    result["dice_mean"] = float(np.mean(dice_means))
    result["val_cases"] = float(sums[4])
    return result


def _forward_with_aux(model: nn.Module, cfg: Config) -> Any:
    """``x -> model(x)`` with its auxiliary (training-only) outputs where it has an ``aux``
    switch (CU-Net), computed in eval mode (BatchNorm running statistics, no dropout); the
    switch is looked up once per model, not per batch. With the ``mask`` fill of sequence
    dropout the (whole) validation inputs get availability channels of ones."""
    net: Any = model
    if "aux" in inspect.signature(model.forward).parameters:
        net = lambda x: model(x, aux=True)  # noqa: E731
    if model_missing_fill(cfg.data.sequence_dropout, cfg.data.missing_fill) != "mask":
        return net
    return lambda x: net(with_availability(x, np.ones(4, dtype=np.float32)))


def _case_tensors(case: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(label, brain)`` of a case as tensors: int64 labels, and the brain mask with every
    labelled voxel in it (copies: cached arrays are read-only memory maps)."""
    label = torch.from_numpy(np.array(case.label, dtype=np.int64))
    brain = torch.from_numpy(np.array(case.brain_mask, dtype=bool)) | (label > 0)
    return label, brain


@torch.no_grad()
def validation_objective(
    model: nn.Module,
    loss_fn: Any,
    cases: Sequence[Any],
    cfg: Config,
    info: DistInfo,
    *,
    aux_weight: float | None = None,
    slice_batch: int = 16,
) -> float:
    """Mean training loss over the validation ``cases`` (shared out over ranks).

    2D models: the axial slices holding brain, in batches of ``slice_batch`` (the loss's sampling,
    e.g. LWS, is drawn per batch as in training); the mean is weighted by the slices of each
    batch. 3D models: one forward of each whole volume. Random sampling in the loss is drawn from
    a generator seeded by ``cfg.seed``, so the value does not depend on the training RNG state and
    does not change it. ``aux_weight``: the epoch's CU-Net auxiliary weight (Eq. 4's omega,
    :func:`cascadeseg.training.schedules.aux_weight_at`); ``None``: the loss's own.
    """
    plain = dist_utils.unwrap_model(model)
    plain.eval()
    forward = _forward_with_aux(plain, cfg)
    device = info.device
    sums = torch.zeros(2, dtype=torch.float64)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(cfg.seed)
        for i, case in enumerate(cases):
            if i % info.world_size != info.rank:
                continue
            label, brain = _case_tensors(case)
            if plain.spatial_dims == 3:
                x = torch.from_numpy(np.array(case.image, dtype=np.float32))[None].to(device)
                batch = {"label": label[None].to(device), "brain_mask": brain[None].to(device)}
                total, _ = loss_fn(to_float32(forward(x)), batch, aux_weight=aux_weight)
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
                total, _ = loss_fn(to_float32(out), batch, aux_weight=aux_weight)
                sums += torch.tensor([float(total) * len(zs), float(len(zs))], dtype=torch.float64)
    if info.distributed:
        sums = dist_utils.all_reduce_sum(sums.to(device), info).cpu()
    return float(sums[0] / max(1.0, float(sums[1])))
