"""One training session (one rank's view): its objects, the epoch's step loop, its checkpoints.

:class:`Session` opens a run directory (new or resumed), builds the data, model, loss,
optimiser, sampler and loader in a fixed order (the seeds depend on it), and runs the
iterations of one epoch (:meth:`Session.train_epoch`); :mod:`cascadeseg.training.trainer`
validates and decides between epochs.

One step: re-seed the global generator from ``(seed, rank, step)``, forward under autocast,
loss in float32 with the epoch's weights (:func:`cascadeseg.training.schedules.aux_weight_at`),
one all-reduce (losses, non-finite flag, rank 0's clock), the learning rate of the fractional
epoch, backward (GradScaler for fp16), optional gradient clipping, optimiser step, logs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from cascadeseg.config import Config, early_crop_size, save_config, to_dict
from cascadeseg.data.splits import save_split
from cascadeseg.errors import CascadesegError, ConfigError
from cascadeseg.losses import build_loss
from cascadeseg.models import SegmentationModule
from cascadeseg.models.checkpoint import atomic_torch_save, make_checkpoint
from cascadeseg.models.outputs import count_parameters
from cascadeseg.runtime import autocast, resolve_precision, to_float32, tune_device
from cascadeseg.training import distributed as dist_utils
from cascadeseg.training.averaging import WeightAverage
from cascadeseg.training.build import (
    build_optimizer,
    build_training_model,
    saved_model_args,
    set_lr,
)
from cascadeseg.training.data import (
    TrainingData,
    TrainingSampler,
    batch_to_device,
    make_train_loader,
    prepare_data,
)
from cascadeseg.training.distributed import DistInfo
from cascadeseg.training.logs import RunLog, crop_text, progress_bar, start_lines
from cascadeseg.training.monitor import warn_lws_coverage
from cascadeseg.training.run_state import (
    RunState,
    open_run,
    reopen_if_extended,
    rng_states,
    seed_everything,
    set_rng_states,
    step_seed,
)
from cascadeseg.training.schedules import aux_weight_at, budget_seconds, lr_at, schedule_epoch


class TrainingError(CascadesegError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and a remedy."""


class SimulatedKill(BaseException):
    """Raised by the ``_stop_after_steps`` test hook of ``train`` to imitate a kill."""


def check_paper_conditions(cfg: Config, data: TrainingData, passes_per_epoch: float) -> None:
    """Warnings about a recipe that cannot do what the paper's procedure needs (rank 0).

    Args:
        passes_per_epoch: full passes over the training samples an epoch makes.
    """
    train_cases = getattr(data.train_dataset, "cases", [])
    if train_cases:
        warn_lws_coverage(cfg, train_cases, cfg.train.epochs * passes_per_epoch)
    if not data.val_cases and cfg.train.early_stop_patience > 0:
        warnings.warn(
            f"train.early_stop_patience={cfg.train.early_stop_patience}: no validation cases "
            f"(data.split={cfg.data.split}), so training runs all {cfg.train.epochs} epochs",
            UserWarning,
            stacklevel=2,
        )


@dataclasses.dataclass
class StepClock:
    """The training time and step time a session has measured.

    Attributes:
        last_elapsed_s: training time at the last step, from rank 0's clock (the same on every
            rank); ``None`` before the session's first step.
        step_s: wall seconds per training step on this rank (``None`` at first), for the
            number of steps a time budget holds (``schedules.budget_fraction``).
        last_step_s: ``step_s`` of rank 0 as shared at the last step (the same on every rank).
    """

    last_elapsed_s: float | None = None
    step_s: float | None = None
    last_step_s: float | None = None
    first_step_end: float | None = None
    steps_measured: int = 0

    def measure_step(self) -> None:
        """Update ``step_s`` after a step ends.

        The mean over this session's steps after its first: validation, checkpoints and the
        waits for data are included (they recur, so they shorten the run a budget holds), the
        first step's startup (loader workers, kernel selection) is not.
        """
        now = time.monotonic()
        if self.first_step_end is None:
            self.first_step_end = now
        else:
            self.steps_measured += 1
            self.step_s = (now - self.first_step_end) / self.steps_measured


@dataclasses.dataclass
class StepResult:
    """What one step's all-reduce gives every rank.

    Attributes:
        nonfinite: some rank's loss was not finite (every rank skips or stops).
        loss: the mean loss over ranks (NaN when ``nonfinite``).
        parts: the mean of each logged part of the loss, in the session's ``part_keys`` order.
        elapsed_s: rank 0's training time (s).
        step_s: rank 0's measured step time (s), ``None`` when not measured yet.
    """

    nonfinite: bool
    loss: float
    parts: list[float]
    elapsed_s: float
    step_s: float | None


class Session:
    """The objects of one training session and the steps of its epochs (one rank's view).

    Args:
        cfg: the resolved recipe (on ``resume``, checked against the saved one).
        data_dir: dataset folder.
        out: run directory.
        info: this process's rank, world size and device.
        resume: continue from ``out/checkpoints/last.pt``.
        progress: show progress bars (rank 0 only).
    """

    def __init__(
        self,
        cfg: Config,
        data_dir: Path,
        out: Path,
        info: DistInfo,
        *,
        resume: bool,
        progress: bool,
    ) -> None:
        ckpt, cfg = open_run(cfg, out, resume)
        self.cfg = cfg
        self.info = info
        self.main = info.is_main
        self.out = out
        self.ckpt_dir = out / "checkpoints"
        self.progress = progress and self.main
        if self.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        seed_everything(cfg.seed)
        self.data: TrainingData = prepare_data(cfg, data_dir, info, progress=self.progress)
        if self.main:
            save_split(self.data.split, out / "split.json")
        self._build_model()
        self.state = RunState()
        if ckpt is not None:
            self._restore(ckpt)
        # Stage 2 gets no gradient while stage 1 trains alone: DDP must not wait for it.
        self.model = dist_utils.wrap_model(
            self.plain_model, info, find_unused_parameters=cfg.train.stage1_first > 0
        )
        if cfg.train.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]
        self._build_loader(check_paper=self.main and not resume)
        self.budget_s = budget_seconds(cfg.train)
        #: The loss's logged parts (set at the first step of a phase: the loss decides them).
        self.part_keys: list[str] | None = None
        self.clock = StepClock()
        self.log = RunLog(
            out,
            enabled=self.main,
            tensorboard=cfg.train.tensorboard,
            step=self.state.step,
            history=self.state.history,
        )
        if self.main:
            for line in self._start_lines():
                print(line, file=sys.stderr, flush=True)
        self.session_start = time.monotonic()
        self.elapsed_at_start = self.state.elapsed_s

    # ---------------------------------------------------------------- set-up

    def _build_model(self) -> None:
        """Model (on the device, channels-last if asked), loss, optimiser, grad scaler."""
        cfg, device = self.cfg, self.info.device
        tune_device(device)
        #: fp32/bf16/fp16 actually used (``train.precision: auto`` resolved for this device).
        self.precision = resolve_precision(cfg.train.precision, device)
        model = build_training_model(cfg).to(device)
        if cfg.train.channels_last:
            fmt = torch.channels_last_3d if model.spatial_dims == 3 else torch.channels_last
            model = model.to(memory_format=fmt)  # type: ignore[call-overload]
        if cfg.train.stage1_first > 0 and not hasattr(model, "set_stage1_only"):
            raise ConfigError(
                f"train.stage1_first={cfg.train.stage1_first}: model {cfg.model.name!r} is not a "
                "cascade with a stage 1 to train first (use two_stage, or 0)"
            )
        self.plain_model: SegmentationModule = model
        self.loss_fn = build_loss(model, cfg.loss)
        self.optimizer = build_optimizer(model.parameters(), cfg.optim)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        #: The moving average of the weights (``train.ema_width``), ``None`` when off.
        self.average = WeightAverage(model, cfg.train.ema_width) if cfg.train.ema_width else None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        """Weights, optimiser, scaler, run state and RNG states of a resumed run."""
        self.plain_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = RunState(**ckpt["state"])
        if self.average is not None:
            self.average.load_state_dict(ckpt["average"])
        set_rng_states(ckpt["rng"])
        reopen_if_extended(self.state, self.cfg.train)

    def _build_loader(self, *, check_paper: bool) -> None:
        """Iterations per epoch, this rank's sampler and the loader (and, for a new run on
        rank 0, the warnings about what the paper's procedure needs)."""
        cfg, info = self.cfg, self.info
        dataset = self.data.train_dataset
        n_items = len(dataset)  # type: ignore[arg-type]
        world_batch = cfg.train.batch_size * info.world_size
        self.iters_per_epoch = cfg.train.iters_per_epoch or max(1, n_items // world_batch)
        self.sampler = TrainingSampler(
            n_items,
            self.iters_per_epoch * cfg.train.batch_size,
            seed=cfg.seed,
            rank=info.rank,
            world_size=info.world_size,
        )
        self.loader = make_train_loader(dataset, self.sampler, cfg, info.device)
        if check_paper:
            check_paper_conditions(cfg, self.data, self.iters_per_epoch * world_batch / n_items)

    def _start_lines(self) -> list[str]:
        return start_lines(
            self.cfg,
            n_params=count_parameters(self.plain_model, training=True),
            split=self.data.split,
            n_validated=len(self.data.val_cases),
            info=self.info,
            precision=self.precision,
            iters_per_epoch=self.iters_per_epoch,
            state=self.state,
        )

    # ---------------------------------------------------------------- an epoch

    def train_epoch(self, epoch: int, stop_after_steps: int | None) -> tuple[bool, int, float]:
        """The remaining iterations of ``epoch``, saving ``last.pt`` every
        ``train.checkpoint_every`` steps.

        Args:
            stop_after_steps: testing hook: raise :class:`SimulatedKill` once this many
                iterations are done in total.

        Returns:
            ``(out_of_time, iterations, seconds)``: whether the time budget ended the epoch, the
            iterations run in this session and the wall time they took (s).
        """
        cfg, state = self.cfg, self.state
        self.set_phase(epoch)
        self.set_dropout(epoch)
        self.set_early_crops(epoch)
        self.data.train_dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        self.sampler.set_epoch(
            epoch,
            start=state.iter_in_epoch * cfg.train.batch_size,
            dropout_on=state.dropout_on,
            early=state.early_crops,
        )
        self.model.train()
        bar = progress_bar(
            self.iters_per_epoch, state.iter_in_epoch, epoch, cfg.train.epochs, self.progress
        )
        out_of_time = False
        epoch_start = time.monotonic()
        iterations = 0
        for batch in self.loader:
            out_of_time = self.step(batch, epoch, bar)
            iterations += 1
            if out_of_time:
                break
            every = cfg.train.checkpoint_every
            if every and state.step % every == 0 and state.iter_in_epoch < self.iters_per_epoch:
                self.save_last()
            if stop_after_steps is not None and state.step >= stop_after_steps:
                raise SimulatedKill(f"stopped after {state.step} steps (test hook)")
        if bar is not None:
            bar.close()
        return out_of_time, iterations, time.monotonic() - epoch_start

    def set_phase(self, epoch: int) -> None:
        """Stage 1 alone or the whole cascade for this epoch (``train.stage1_first``).

        Decided at the start of an epoch and kept in the run state, so a run resumed inside an
        epoch stays in that epoch's phase.
        """
        cfg, state = self.cfg, self.state
        if cfg.train.stage1_first <= 0:
            return
        if state.iter_in_epoch == 0:
            stage1_only = (
                self.epoch_start_progress(epoch) < cfg.train.stage1_first * cfg.train.epochs
            )
            if stage1_only != state.stage1_only:
                self.part_keys = None  # the loss reports other parts in the other phase
            state.stage1_only = stage1_only
        self.plain_model.set_stage1_only(state.stage1_only)  # type: ignore[operator]
        if self.average is not None:
            self.average.model.set_stage1_only(state.stage1_only)  # type: ignore[operator]

    def set_dropout(self, epoch: int) -> None:
        """Whether this epoch's samples may lose sequences: inside the window
        ``[data.sequence_dropout_start, data.sequence_dropout_end)`` of the run.

        Decided at the start of an epoch and kept in the run state, as :meth:`set_phase`.
        """
        cfg, state = self.cfg, self.state
        start, end = cfg.data.sequence_dropout_start, cfg.data.sequence_dropout_end
        if (start <= 0 and end >= 1) or cfg.data.sequence_dropout <= 0:
            return
        if state.iter_in_epoch != 0:
            return
        progress = self.epoch_start_progress(epoch) / cfg.train.epochs
        dropout_on = start <= progress < end
        # A change from the previous epoch (none before the first step: a run whose window
        # opens later starts without dropout, silently).
        if dropout_on != state.dropout_on and state.step > 0 and self.main:
            what = "starts" if dropout_on else "stops"
            print(f"sequence dropout {what} (epoch {epoch + 1})", file=sys.stderr, flush=True)
        state.dropout_on = dropout_on

    def set_early_crops(self, epoch: int) -> None:
        """Whether this epoch crops at ``data.early_patch_size``: before
        ``data.early_patch_end`` of the run. Decided at the start of an epoch and kept in the
        run state, as :meth:`set_phase`."""
        cfg, state = self.cfg, self.state
        early_size = early_crop_size(cfg.data)
        if early_size is None or state.iter_in_epoch != 0:
            return
        progress = self.epoch_start_progress(epoch) / cfg.train.epochs
        early = progress < cfg.data.early_patch_end
        if early != state.early_crops and state.step > 0 and self.main:
            size = crop_text(early_size if early else cfg.data.patch_size)
            print(f"crops of {size} from epoch {epoch + 1}", file=sys.stderr, flush=True)
        state.early_crops = early

    def epoch_start_progress(self, epoch: int) -> float:
        """The fractional epoch of the schedules at the start of ``epoch``."""
        # In the first epoch of a session the saved run state gives the time spent (the same
        # checkpoint on every rank), later the clock shared at the last step.
        last = self.clock.last_elapsed_s
        elapsed = self.state.elapsed_s if last is None else last
        return self.schedule_epoch(epoch, 0, elapsed, self.clock.last_step_s)

    def schedule_epoch(
        self, epoch: int, iteration: int, elapsed_s: float, step_s: float | None
    ) -> float:
        """The fractional epoch of the schedules at ``iteration`` of ``epoch`` (time budget
        included with ``train.time_schedule``)."""
        train_cfg = self.cfg.train
        return schedule_epoch(
            epoch,
            iteration,
            self.iters_per_epoch,
            epochs=train_cfg.epochs,
            elapsed_s=elapsed_s,
            budget_s=self.budget_s if train_cfg.time_schedule else None,
            step=self.state.step,
            step_s=step_s,
        )

    # ---------------------------------------------------------------- a step

    def step(self, batch: Any, epoch: int, bar: Any) -> bool:
        """One iteration; returns True when the time budget is spent."""
        state = self.state
        total, parts = self.forward_loss(batch, epoch)
        result = self.reduce(total, parts)
        progress_epoch = self.schedule_epoch(
            epoch, state.iter_in_epoch, result.elapsed_s, result.step_s
        )
        self.clock.last_elapsed_s = result.elapsed_s
        self.clock.last_step_s = result.step_s
        lr = lr_at(progress_epoch, self.cfg.optim, self.cfg.train.epochs)
        set_lr(self.optimizer, lr)
        if result.nonfinite:
            self.skip_nonfinite(total, epoch, lr)
        else:
            self.update(total, result)
        self.optimizer.zero_grad(set_to_none=True)
        self.log.step(state.step, epoch, lr, result.loss)
        state.step += 1
        state.iter_in_epoch += 1
        state.elapsed_s = self.elapsed_at_start + time.monotonic() - self.session_start
        self.clock.measure_step()
        if bar is not None:
            bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
        return self.budget_s is not None and result.elapsed_s >= self.budget_s

    def forward_loss(self, batch: Any, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``batch`` (float32) with the weights of ``epoch``, and its parts."""
        cfg, info = self.cfg, self.info
        # Dropout and LWS sampling draw from the global generator: re-seed it from the step so a
        # resumed run repeats the same draws.
        torch.manual_seed(step_seed(cfg.seed, info.rank, self.state.step))
        batch = batch_to_device(batch, info.device, cfg.train.channels_last)
        with autocast(self.precision, info.device):
            output = self.model(batch["image"])
        aux_weight = aux_weight_at(epoch, cfg.loss)
        total, parts = self.loss_fn(to_float32(output), batch, aux_weight=aux_weight)
        if self.part_keys is None:
            self.part_keys = sorted(k for k in parts if k != "total")
        return total, parts

    def reduce(self, total: torch.Tensor, parts: dict[str, float]) -> StepResult:
        """One all-reduce per step: losses (for the logs), any non-finite loss (every rank then
        skips or stops together), and rank 0's clock (one learning rate, one stop decision)."""
        info, keys = self.info, self.part_keys or []
        elapsed = self.elapsed_at_start + time.monotonic() - self.session_start
        finite = bool(torch.isfinite(total))
        local = torch.tensor(
            [
                float(total.detach()) if finite else 0.0,
                0.0 if finite else 1.0,
                elapsed if info.is_main else 0.0,
                (self.clock.step_s or 0.0) if info.is_main else 0.0,
                *[float(parts.get(k, 0.0)) if finite else 0.0 for k in keys],
            ],
            dtype=torch.float64,
        )
        reduced = dist_utils.all_reduce_sum(local, info).cpu().tolist()
        nonfinite = reduced[1] > 0
        return StepResult(
            nonfinite=nonfinite,
            loss=math.nan if nonfinite else reduced[0] / info.world_size,
            parts=[v / info.world_size for v in reduced[4:]],
            elapsed_s=reduced[2],
            step_s=reduced[3] or None,
        )

    def skip_nonfinite(self, total: torch.Tensor, epoch: int, lr: float) -> None:
        """Count a skipped step (``train.skip_nonfinite``), or stop naming the step."""
        state = self.state
        if not self.cfg.train.skip_nonfinite:
            local_value = float(total.detach())
            raise TrainingError(
                f"non-finite loss ({local_value}) at epoch {epoch}, iteration "
                f"{state.iter_in_epoch} (step {state.step}, lr {lr:.3g}); lower optim.lr, "
                "set optim.grad_clip, use train.precision=fp32, or set "
                "train.skip_nonfinite=true to skip such steps"
            )
        state.epoch_sums["skipped"] = state.epoch_sums.get("skipped", 0.0) + 1

    def update(self, total: torch.Tensor, result: StepResult) -> None:
        """Backward, optional gradient clipping, optimiser step; add the losses to the sums."""
        grad_clip = self.cfg.optim.grad_clip
        self.scaler.scale(total).backward()
        if grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.plain_model)
        sums = self.state.epoch_sums
        sums["loss"] = sums.get("loss", 0.0) + result.loss
        for key, value in zip(self.part_keys or [], result.parts):
            sums[key] = sums.get(key, 0.0) + value
        sums["n"] = sums.get("n", 0.0) + 1

    # ---------------------------------------------------------------- checkpoints

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validated and saved for inference: the moving average when
        ``train.ema_width`` is set, else the model being trained."""
        return self.model if self.average is None else self.average.model

    def _checkpoint(self, model: torch.nn.Module, **fields: Any) -> dict[str, Any]:
        return make_checkpoint(
            model_name=self.cfg.model.name,
            model_args=saved_model_args(self.plain_model),
            model_state=dist_utils.unwrap_model(model).state_dict(),
            config=to_dict(self.cfg),
            epoch=self.state.epoch,
            iteration=self.state.step,
            **fields,
        )

    def save_last(self) -> None:
        """``checkpoints/last.pt``: everything a resume needs (rank 0 only)."""
        if not self.main:
            return
        state = self.state
        average = {} if self.average is None else {"average": self.average.state_dict()}
        full = self._checkpoint(
            self.plain_model,
            optimizer=self.optimizer.state_dict(),
            scheduler={
                "epoch": state.epoch,
                "iteration": state.step,
                "lr": float(self.optimizer.param_groups[0]["lr"]),
            },
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
            rng=rng_states(),
            state=state.as_dict(),
            history=list(state.history),
            **average,
        )
        atomic_torch_save(full, self.ckpt_dir / "last.pt")

    def save_weights(self, path: Path, extra: dict[str, Any]) -> None:
        """An inference checkpoint (the weights of :attr:`eval_model`, config, no optimiser
        state) at ``path``."""
        atomic_torch_save(self._checkpoint(self.eval_model, extra=extra), path)

    def close(self) -> None:
        """Close the logs (``steps.csv``, TensorBoard)."""
        self.log.close()
