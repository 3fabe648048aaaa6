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
   ``best.pt`` on the best mean validation Dice, ``snapshot_EEEE.pt`` for the last N epochs;
   with ``train.ema_width`` validation, ``best.pt`` and the snapshots use the moving average of
   the weights, ``training.averaging``),
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
from pathlib import Path

from cascadeseg.config import Config
from cascadeseg.config import validate as validate_config
from cascadeseg.training import distributed as dist_utils
from cascadeseg.training.logs import epoch_row, plot_curves, print_epoch
from cascadeseg.training.run_state import (
    prune_snapshots,
    read_summary,
    should_stop_early,
    write_summary,
)
from cascadeseg.training.schedules import aux_weight_at
from cascadeseg.training.session import Session
from cascadeseg.training.validation import validate, validation_objective


def check_config(cfg: Config) -> None:
    """Reject settings the trainer cannot run with (one-line :class:`ConfigError`).

    Every :class:`Config` is checked when it is built (:func:`cascadeseg.config.validate`);
    this re-runs those checks for configs built around them.
    """
    validate_config(cfg)


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
    model = session.eval_model
    values = validate(model, cases, cfg, session.info, precision=session.precision)
    if cfg.train.monitor == "objective":
        values["val_objective"] = validation_objective(
            model,
            session.loss_fn,
            cases,
            cfg,
            session.info,
            aux_weight=aux_weight_at(epoch, cfg.loss),
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
    "read_summary",
    "train",
    "validate",
]
