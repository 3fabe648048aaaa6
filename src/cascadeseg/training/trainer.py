"""The training loop: :func:`train` goes from a recipe and a data folder to a run directory.

What happens, in order (rank 0 alone writes files and shows progress):

1. find the cases (``data.layouts``), split them (``data.splits``: k-fold or CU-Net 3:1:1) and
   save ``split.json``; preprocess every case once into the cache (``data.cache``);
2. build the model (``models.build_model``), the loss (``losses.build_loss``), the optimiser
   (``training.build.build_optimizer``) and, with ``torchrun``, wrap the model in
   DistributedDataParallel (``training.session``);
3. epochs of ``iters_per_epoch`` iterations (``training.session``): the learning rate is set
   every iteration from the schedule (``training.schedules.lr_at`` at the fractional epoch);
   forward under autocast, loss in float32 with the epoch's weights (CU-Net's ``aux_weight``,
   ``training.schedules.aux_weight_at``), backward (through a GradScaler for fp16), optional
   gradient clipping, step;
4. every ``val_every`` epochs: per-region Dice ``[WT, TC, ET]`` on whole validation volumes
   (3D: one padded forward per case; 2D: slice by slice) and a soft-Dice validation loss, plus
   the training objective on them with ``train.monitor: objective`` (``training.monitor``);
   early stopping watches the one ``train.monitor`` names (``data.split: all``: no validation);
5. checkpoints (``checkpoints/last.pt`` every epoch and optionally every N iterations,
   ``best.pt`` on the best mean validation Dice, ``snapshot_EEEE.pt`` for the last N epochs),
   ``metrics.csv`` per epoch, ``steps.csv`` per iteration, TensorBoard when installed, and
   ``curves.png`` plus ``summary.json`` at the end. ``metrics.csv`` columns: ``epoch, step,
   lr, train_loss`` (the mean loss back-propagated), ``train_loss_<part>`` (the mean loss of one
   output, e.g. ``train_loss_stage1``, ``train_loss_branch2``; losses, not Dice scores),
   ``train_aux_weight`` (CU-Net's auxiliary weight, Eq. 4's omega), ``skipped, minutes,
   it_per_s`` and, on validated epochs, ``val_loss, dice_WT, dice_TC, dice_ET, dice_mean,
   val_cases``.

Reproducibility and resume. The per-iteration randomness never depends on how the run got there:
the sampler's order is drawn from ``(seed, epoch)``, datasets draw each item's augmentation from
``(seed, epoch, index)``, and the global torch generator (dropout, LWS sampling) is re-seeded from
``(seed, rank, step)`` before every iteration. A run killed at any moment and resumed with
``resume=True`` from ``checkpoints/last.pt`` therefore repeats the uninterrupted run's losses
exactly (CPU; tested), provided the checkpoint was written at an iteration boundary, which atomic
writes guarantee. Checkpoints also carry the RNG states for completeness.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cascadeseg.config import Config
from cascadeseg.config import validate as validate_config
from cascadeseg.data.labels import REGIONS, label_to_regions
from cascadeseg.runtime import autocast, resolve_precision
from cascadeseg.training import distributed as dist_utils
from cascadeseg.training.distributed import DistInfo
from cascadeseg.training.logs import epoch_row, plot_curves, print_epoch
from cascadeseg.training.monitor import validation_objective
from cascadeseg.training.run_state import (
    prune_snapshots,
    read_summary,
    should_stop_early,
    write_summary,
)
from cascadeseg.training.schedules import EpochLoss
from cascadeseg.training.session import Session, to_float32


def check_config(cfg: Config) -> None:
    """Reject settings the trainer cannot run with (one-line :class:`ConfigError`).

    Every :class:`Config` is checked when it is built (:func:`cascadeseg.config.validate`);
    this re-runs those checks for configs built around them.
    """
    validate_config(cfg)


def dice_per_region(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Dice of each region, ``2|P & R| / (|P| + |R|)``; 1 when both are empty (BraTS convention).

    Args:
        pred: ``(3, ...)`` bool, regions ``[WT, TC, ET]``.
        ref: ``(3, ...)`` bool, same shape.

    Returns:
        ``(3,)`` float64 Dice per region.
    """
    pred = np.asarray(pred, dtype=bool).reshape(pred.shape[0], -1)
    ref = np.asarray(ref, dtype=bool).reshape(ref.shape[0], -1)
    inter = np.logical_and(pred, ref).sum(1).astype(np.float64)
    total = pred.sum(1).astype(np.float64) + ref.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    return dice


def soft_dice_loss_from_probs(probs: np.ndarray, ref: np.ndarray, eps: float = 1e-5) -> float:
    """Validation loss: ``1 - mean over regions`` of the soft Dice with squared denominators.

    The papers define no validation loss for early stopping; this one (Eq. 2 of the two-stage
    paper on probabilities) is deterministic, model-agnostic and follows the evaluation metric.
    A region empty in both prediction and reference counts as Dice 1.

    Args:
        probs: ``(3, ...)`` region probabilities in [0, 1].
        ref: ``(3, ...)`` binary references.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(probs.shape[0], -1)
    r = np.asarray(ref, dtype=np.float64).reshape(ref.shape[0], -1)
    denom = (p * p).sum(1) + (r * r).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denom > eps, 2 * (p * r).sum(1) / (denom + eps), 1.0)
    return float(1.0 - dice.mean())


# --------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image: np.ndarray,
    device: torch.device,
    precision: str = "fp32",
    *,
    slice_context: int = 0,
    slice_batch: int = 16,
) -> np.ndarray:
    """Region probabilities ``(3, x, y, z)`` ``[WT, TC, ET]`` of a whole preprocessed volume.

    3D models: one forward of the whole volume (the model pads and crops back). 2D models:
    axial slices in batches of ``slice_batch``; with ``slice_context = c`` the channels are
    ``[slice z-c, ..., z+c]`` x 4 modalities, zeros beyond the volume, as
    :class:`cascadeseg.data.datasets.SliceDataset2D` stacks them. The model is left in eval mode.

    Args:
        image: ``(4, x, y, z)`` float32 preprocessed image.
    """
    from cascadeseg.inference.predictor import slice_stack
    from cascadeseg.models import region_probabilities

    model.eval()
    kind = str(model.output_kind)
    if model.spatial_dims == 3:
        # A copy: cached images are read-only memory maps. Models pad to their own size multiple
        # and crop back (models/blocks.py).
        x = torch.from_numpy(np.array(image, dtype=np.float32))[None].to(device)
        with autocast(precision, device):
            out = model(x)
        return region_probabilities(to_float32(out), kind)[0].float().cpu().numpy()
    depth = image.shape[-1]
    result = np.zeros((3, *image.shape[1:]), dtype=np.float32)
    for start in range(0, depth, slice_batch):
        stop = min(depth, start + slice_batch)
        x = torch.from_numpy(slice_stack(image, start, stop, slice_context)).to(device)
        with autocast(precision, device):
            out = model(x)
        probs = region_probabilities(to_float32(out), kind)
        result[..., start:stop] = probs.float().cpu().numpy().transpose(1, 2, 3, 0)
    return result


def validate(
    model: nn.Module,
    cases: Sequence[Any],
    cfg: Config,
    info: DistInfo,
    *,
    precision: str | None = None,
) -> dict[str, float]:
    """Mean per-region Dice and soft-Dice loss over ``cases`` (shared out over ranks).

    Predictions are thresholded at 0.5 and restricted to the brain mask (CU-Net merges the
    non-brain mask into its predictions, sec. 2.2; harmless for the others).

    Returns:
        ``{"val_loss", "dice_WT", "dice_TC", "dice_ET", "dice_mean", "val_cases"}``.
    """
    plain = dist_utils.unwrap_model(model)
    sums = torch.zeros(5, dtype=torch.float64)
    for i, case in enumerate(cases):
        if i % info.world_size != info.rank:
            continue
        probs = predict_probabilities(
            plain,
            case.image,
            info.device,
            precision or resolve_precision(cfg.train.precision, info.device),
            slice_context=cfg.data.slice_context,
        )
        mask = getattr(case, "brain_mask", None)
        if mask is not None:
            probs = probs * np.asarray(mask, dtype=np.float32)[None]
        ref = label_to_regions(case.label)
        dice = dice_per_region(probs >= cfg.inference.threshold, ref)
        sums += torch.tensor(
            [soft_dice_loss_from_probs(probs, ref), *dice, 1.0], dtype=torch.float64
        )
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


# --------------------------------------------------------------------------------------------
# The loop


def train(
    cfg: Config,
    data: Path,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    _stop_after_steps: int | None = None,
) -> Path:
    """Train ``cfg.model`` on the labelled cases of ``data``; write the run to ``out``.

    Args:
        cfg: the resolved recipe.
        data: dataset folder in any supported layout.
        out: run directory (created). Without ``resume`` it must not hold a run already.
        resume: continue from ``out/checkpoints/last.pt`` (the saved config must match ``cfg``
            except for :data:`cascadeseg.training.run_state.RESUMABLE_KEYS`).
        progress: show progress bars (rank 0 only).
        _stop_after_steps: testing hook: raise
            :class:`cascadeseg.training.session.SimulatedKill` once this many iterations are
            done in total, as a kill would (checkpoints written so far stay).

    Returns:
        The run directory.

    Raises:
        ConfigError, InputError: bad recipe or data. TrainingError: non-finite loss.
    """
    check_config(cfg)
    out = Path(out)
    info = dist_utils.init_distributed(cfg.train.device)
    try:
        session = Session(cfg, Path(data), out, info, resume=resume, progress=progress)
        _run(session, _stop_after_steps)
        return out
    finally:
        if info.distributed:
            with contextlib.suppress(Exception):
                dist_utils.cleanup(info)


def _run(session: Session, stop_after_steps: int | None) -> None:
    """Epochs until the last one, an early stop or the time budget; then the summary."""
    cfg, state = session.cfg, session.state
    try:
        while not state.finished and state.epoch < cfg.train.epochs:
            epoch = state.epoch
            out_of_time, iterations, seconds = session.train_epoch(epoch, stop_after_steps)
            _end_epoch(session, epoch, out_of_time, iterations, seconds)
    finally:
        session.close()
    if session.main:
        if state.history:
            plot_curves(state.history, session.out / "curves.png")
        write_summary(session.out, state)


def _end_epoch(
    session: Session, epoch: int, out_of_time: bool, iterations: int, seconds: float
) -> None:
    """Log, validate, decide whether to stop, and write the checkpoints of ``epoch``."""
    cfg, state = session.cfg, session.state
    lr = session.optimizer.param_groups[0]["lr"]
    row = epoch_row(state, epoch, lr, iterations, seconds)
    # Epochs of stage 1 alone: their validation scores stage 1, and their weights hold an
    # untrained stage 2, so they are neither "best", nor snapshots, nor a reason to stop.
    cascade_epoch = not state.stage1_only
    if cfg.train.stage1_first > 0:
        row["stage1_only"] = float(state.stage1_only)
    last_epoch = epoch + 1 == cfg.train.epochs
    validate_now = cfg.train.val_every > 0 and (
        (epoch + 1) % cfg.train.val_every == 0 or last_epoch or out_of_time
    )
    if validate_now and session.data.val_cases:
        row.update(_validation_values(session, epoch))
    # A budget-stopped epoch that is later resumed replaces its row.
    state.history = [r for r in state.history if r["epoch"] != epoch] + [row]
    monitored = "val_objective" if cfg.train.monitor == "objective" else "val_loss"
    val_losses = [
        r[monitored] for r in state.history if monitored in r and not r.get("stage1_only")
    ]
    stop_early = (
        cascade_epoch
        and validate_now
        and should_stop_early(val_losses, cfg.train.early_stop_patience)
    )
    improved = cascade_epoch and "dice_mean" in row and row["dice_mean"] > state.best_dice
    if improved:
        state.best_dice, state.best_epoch = row["dice_mean"], epoch
    state.end_epoch(out_of_time=out_of_time, stop_early=stop_early, epochs=cfg.train.epochs)
    if session.main:
        session.log.epoch(state.history, epoch)
        _save_epoch_weights(session, row, epoch, improved=improved, cascade_epoch=cascade_epoch)
        session.save_last()
        print_epoch(row, state, cfg.train.epochs)
    dist_utils.barrier(session.info)


def _validation_values(session: Session, epoch: int) -> dict[str, float]:
    """Validation Dice and soft-Dice loss, and with ``train.monitor: objective`` the training
    objective on the validation cases; the model is back in train mode afterwards."""
    cfg, cases = session.cfg, session.data.val_cases
    values = validate(session.model, cases, cfg, session.info, precision=session.precision)
    if cfg.train.monitor == "objective":
        loss_fn = EpochLoss(session.loss_fn, cfg.loss)
        values["val_objective"] = validation_objective(
            session.model, loss_fn, cases, cfg, session.info, epoch=epoch
        )
    session.model.train()
    return values


def _save_epoch_weights(
    session: Session, row: dict[str, float], epoch: int, *, improved: bool, cascade_epoch: bool
) -> None:
    """``best.pt`` (improved, or a run ending without validation) and ``snapshot_EEEE.pt``."""
    state, train_cfg, ckpt_dir = session.state, session.cfg.train, session.ckpt_dir
    extra = {"val": {k: v for k, v in row.items() if k.startswith("dice_")}, "epoch": epoch}
    if improved or (state.best_epoch < 0 and state.finished):
        session.save_weights(ckpt_dir / "best.pt", extra)
    if train_cfg.snapshots > 0 and cascade_epoch:
        session.save_weights(ckpt_dir / f"snapshot_{epoch:04d}.pt", extra)
        prune_snapshots(ckpt_dir, train_cfg.snapshots)


__all__ = [
    "check_config",
    "dice_per_region",
    "predict_probabilities",
    "read_summary",
    "soft_dice_loss_from_probs",
    "train",
    "validate",
]
