"""Learning-rate and auxiliary-weight schedules of the two papers, as pure functions of the epoch.

Also where a run stands in its schedule (:func:`schedule_epoch`, with a time budget
:func:`budget_fraction`).

``epoch`` counts epochs from 0 and may be fractional (``epoch + iteration / iters_per_epoch``), so a
trainer can update the learning rate every iteration and the warm-up is smooth.
"""

from __future__ import annotations

import math

from cascadeseg.config import LossConfig, OptimConfig, TrainConfig
from cascadeseg.errors import ConfigError


def poly_lr(
    epoch: float,
    *,
    base_lr: float,
    epochs: int,
    warmup_epochs: int = 5,
    power: float = 0.9,
) -> float:
    """Two-stage paper schedule: linear warm-up, then ``lr0 * (1 - e / N_e)^0.9`` (Eq. 3).

    The paper gives "5 epochs of linear warmup" and Eq. 3 without saying how they join. Here Eq. 3
    holds exactly from ``epoch >= warmup_epochs`` on (``e`` is the global epoch, as in Eq. 3), and
    during the warm-up Eq. 3 is multiplied by a factor rising linearly from ``1 / warmup_epochs``
    at epoch 0 to 1 at ``warmup_epochs`` (the start value ``base_lr / warmup_epochs`` is Goyal et
    al.'s and timm's "warmup_lr_init" habit). The product keeps the curve continuous; a piecewise
    "ramp to base_lr, then Eq. 3" (timm's ``PolyLRScheduler`` without ``warmup_prefix``) drops by
    ``(1 - W / N)^power`` at the join, 23% for a 20-epoch CPU recipe.

    Args:
        epoch: epochs done, possibly fractional; ``>= epochs`` gives 0.
        base_lr: initial learning rate ``alpha_0`` (paper: 1e-4).
        epochs: total epochs ``N_e`` (paper: 405).
        warmup_epochs: warm-up length (paper: 5; 0 = none).
        power: exponent (paper: 0.9).
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    progress = min(max(epoch, 0.0) / epochs, 1.0)
    lr = base_lr * (1.0 - progress) ** power
    if warmup_epochs > 0 and epoch < warmup_epochs:
        start = 1.0 / warmup_epochs
        lr *= start + (1.0 - start) * max(epoch, 0.0) / warmup_epochs
    return lr


def step_lr(
    epoch: float,
    *,
    base_lr: float,
    every: int = 10,
    gamma: float = 0.1,
    min_lr: float = 1e-7,
) -> float:
    """CU-Net schedule (sec. 3.2): ``base_lr * gamma^floor(epoch / every)``, never below ``min_lr``.

    Paper: 1e-3 "decreased by a factor of 10 every ten epochs until a minimum threshold of 1e-7".
    """
    if every <= 0:
        raise ValueError(f"every must be positive, got {every}")
    steps = math.floor(max(epoch, 0.0) / every)
    return max(base_lr * gamma**steps, min_lr)


def aux_weight_at(epoch: float, loss_cfg: LossConfig) -> float:
    """CU-Net auxiliary-loss weight at ``epoch`` (Eq. 4's omega, sec. 3.2).

    ``loss_cfg.aux_weight`` at epoch 0, multiplied by ``loss_cfg.aux_decay`` every
    ``loss_cfg.aux_decay_every`` epochs, never below ``loss_cfg.aux_min``. Paper: 0.1
    "decreased by a factor of 10 every ten epochs until a minimum threshold of 1e-3". The trainer
    passes the value to the loss as its ``aux_weight`` (:mod:`cascadeseg.losses.composite`).
    """
    every = loss_cfg.aux_decay_every
    if every <= 0:
        raise ValueError(f"loss.aux_decay_every must be positive, got {every}")
    steps = math.floor(max(epoch, 0.0) / every)
    return max(loss_cfg.aux_weight * loss_cfg.aux_decay**steps, loss_cfg.aux_min)


def lr_at(epoch: float, optim_cfg: OptimConfig, epochs: int) -> float:
    """Learning rate at ``epoch`` for a recipe's optimiser settings.

    ``optim_cfg.schedule``: ``poly`` (:func:`poly_lr` with ``warmup_epochs`` and ``poly_power``),
    ``step`` (:func:`step_lr` with ``step_every`` and ``step_gamma``; CU-Net has no warm-up) or
    ``constant``. Every schedule is bounded below by ``optim_cfg.min_lr``.

    Raises:
        ConfigError: unknown schedule name or non-positive ``epochs``.
    """
    schedule = optim_cfg.schedule
    if schedule == "poly":
        if epochs <= 0:
            raise ConfigError(f"train.epochs must be positive for the poly schedule, got {epochs}")
        lr = poly_lr(
            epoch,
            base_lr=optim_cfg.lr,
            epochs=epochs,
            warmup_epochs=optim_cfg.warmup_epochs,
            power=optim_cfg.poly_power,
        )
    elif schedule == "step":
        if optim_cfg.step_every <= 0:
            raise ConfigError(f"optim.step_every must be positive, got {optim_cfg.step_every}")
        lr = step_lr(
            epoch,
            base_lr=optim_cfg.lr,
            every=optim_cfg.step_every,
            gamma=optim_cfg.step_gamma,
            min_lr=optim_cfg.min_lr,
        )
    elif schedule == "constant":
        lr = optim_cfg.lr
    else:
        raise ConfigError(
            f"unknown optim.schedule {schedule!r} (expected 'poly', 'step' or 'constant')"
        )
    return max(lr, optim_cfg.min_lr)


def budget_fraction(
    step: int, elapsed_s: float, budget_s: float, step_s: float | None = None
) -> float:
    """Share of a time-budgeted run done when step ``step`` (0-based) runs, in ``[0, 1)``.

    A run that a time budget ends (``train.max_minutes`` with ``train.time_schedule``) decays
    its learning rate over the number of steps expected within the budget, not over the wall
    clock: ``step / (step + remaining_s / step_s)``, with ``step_s`` the measured wall time of a
    step (validation and checkpoints included, the first step's startup not). A slow start
    (data-loader workers, kernel selection on the first step) then costs the run the steps it
    could have made but does not advance the decay by itself; a clock fraction let a 45-second
    run spend its warm-up and decay in its first steps and reach lr 0 at step 9. The estimate
    is re-made at every step, so a machine that slows down moves the end of the decay with it.

    Until a step time is measured (the first steps of a session) the spent share of the budget
    stands in. The share stays below ``step / (step + 1)``: the step being taken is never the
    end of the decay, so the learning rate is never 0 before the budget is spent.

    Args:
        step: steps done before this one (over all sessions of the run).
        elapsed_s: training time spent so far (s).
        budget_s: the budget (s), > 0.
        step_s: seconds per training step, ``None`` when not measured yet.
    """
    remaining_s = max(0.0, budget_s - elapsed_s)
    if step_s is None or step_s <= 0:
        fraction = 1.0 - remaining_s / budget_s
    else:
        fraction = step / (step + remaining_s / step_s) if step > 0 else 0.0
    return min(fraction, step / (step + 1))


def budget_seconds(train_cfg: TrainConfig) -> float | None:
    """The time budget ``train.max_minutes`` in seconds (``None``: no budget)."""
    return train_cfg.max_minutes * 60 if train_cfg.max_minutes else None


def schedule_epoch(
    epoch: int,
    iteration_in_epoch: int,
    iters_per_epoch: int,
    *,
    epochs: int,
    elapsed_s: float = 0.0,
    budget_s: float | None = None,
    step: int | None = None,
    step_s: float | None = None,
) -> float:
    """The fractional epoch at which the learning-rate schedule is evaluated.

    ``epoch + iteration / iters_per_epoch`` (the schedule moves every iteration, so warm-up is
    smooth); with a time budget (``train.time_schedule``) the larger of that and ``epochs`` times
    the share of the budget done, so a run cut short by its budget still ends its decay. Given
    ``step`` (steps done), the share counts the steps expected within the budget from the
    measured step time ``step_s`` (:func:`budget_fraction`); else it is the share of the time
    spent.

    Args:
        elapsed_s: training time spent so far (s).
        budget_s: the time budget (s) when it drives the schedule, else ``None``.
        step_s: seconds per training step, ``None`` when not measured yet.
    """
    progress = epoch + iteration_in_epoch / max(1, iters_per_epoch)
    if budget_s:
        if step is None:
            fraction = min(1.0, elapsed_s / budget_s)
        else:
            fraction = budget_fraction(step, elapsed_s, budget_s, step_s)
        progress = max(progress, epochs * fraction)
    return float(progress)
