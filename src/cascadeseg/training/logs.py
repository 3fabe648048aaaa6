"""What a run writes and prints about itself (rank 0).

``steps.csv`` (``step, epoch, lr, loss`` per iteration), ``metrics.csv`` (one row per epoch,
:func:`epoch_row`), TensorBoard scalars when installed, ``curves.png`` (:func:`plot_curves`), the
plan printed at the start (:func:`start_lines`), one line per epoch (:func:`print_epoch`) and the
progress bar.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cascadeseg.config import Config, early_crop_size
from cascadeseg.data.labels import REGIONS
from cascadeseg.training.averaging import ema_share
from cascadeseg.training.distributed import DistInfo
from cascadeseg.training.run_state import RunState
from cascadeseg.training.schedules import budget_seconds

STEPS_HEADER = "step,epoch,lr,loss\n"


def write_metrics_csv(history: Sequence[dict[str, float]], path: Path) -> None:
    """Rewrite ``metrics.csv`` (one row per epoch; columns are the union of the rows' keys)."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: _fmt(row.get(k)) for k in keys})
    tmp.replace(path)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def read_steps_csv(path: Path) -> list[dict[str, float]]:
    """Rows of ``steps.csv`` (``step, epoch, lr, loss``) as floats; a torn last line is dropped."""
    rows: list[dict[str, float]] = []
    if not path.is_file():
        return rows
    with path.open() as fh:
        for row in csv.DictReader(fh):
            try:
                rows.append({k: float(v) for k, v in row.items()})
            except (TypeError, ValueError):
                break
    return rows


def truncate_steps(path: Path, step: int) -> None:
    """Keep the ``steps.csv`` rows of steps before ``step`` (a resume redoes the later ones)."""
    if not path.is_file():
        return
    rows = [r for r in read_steps_csv(path) if r["step"] < step]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        fh.write(STEPS_HEADER)
        for r in rows:
            fh.write(f"{int(r['step'])},{int(r['epoch'])},{r['lr']:.8g},{r['loss']!r}\n")
    tmp.replace(path)


def plot_curves(history: Sequence[dict[str, float]], path: Path) -> None:
    """``curves.png``: training and validation loss, and validation Dice per region, per epoch."""
    import matplotlib  # heavy, and only needed at the end of a run

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r.get("train_loss", math.nan) for r in history], label="train")
    val = [(r["epoch"], r["val_loss"]) for r in history if r.get("val_loss") is not None]
    if val:
        ax_loss.plot(*zip(*val), "o-", label="validation (soft Dice)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for name in (*REGIONS, "mean"):
        pts = [
            (r["epoch"], r[f"dice_{name}"]) for r in history if r.get(f"dice_{name}") is not None
        ]
        if pts:
            ax_dice.plot(*zip(*pts), "o-" if name != "mean" else "k--", label=name)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("validation Dice")
    ax_dice.set_ylim(0, 1)
    if ax_dice.lines:
        ax_dice.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class TensorBoard:
    """TensorBoard scalars when ``tensorboard`` is installed (silently off otherwise)."""

    def __init__(self, log_dir: Path, enabled: bool, purge_step: int) -> None:
        self.writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional extra
        except ImportError:
            return
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step or None)

    def scalars(self, values: dict[str, float], step: int, prefix: str) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RunLog:
    """``steps.csv``, ``metrics.csv`` and TensorBoard of a run; inert where ``enabled`` is off.

    Opening it for a resumed run drops the ``steps.csv`` rows from ``step`` on (they are redone)
    and rewrites ``metrics.csv`` from ``history``.
    """

    def __init__(
        self,
        out: Path,
        *,
        enabled: bool,
        tensorboard: bool,
        step: int,
        history: Sequence[dict[str, float]],
    ) -> None:
        self.out = out
        self.steps_fh: Any = None
        if enabled:
            steps_csv = out / "steps.csv"
            truncate_steps(steps_csv, step)
            if not steps_csv.exists():
                steps_csv.write_text(STEPS_HEADER)
            self.steps_fh = steps_csv.open("a")
            write_metrics_csv(history, out / "metrics.csv")
        self.board = TensorBoard(out / "tensorboard", enabled and tensorboard, step)

    def step(self, step: int, epoch: int, lr: float, loss: float) -> None:
        """One ``steps.csv`` row (flushed: a killed run keeps it) and the ``train/`` scalars."""
        if self.steps_fh is not None:
            self.steps_fh.write(f"{step},{epoch},{lr:.8g},{loss!r}\n")
            self.steps_fh.flush()
        self.board.scalars({"loss": loss, "lr": lr}, step, "train")

    def epoch(self, history: Sequence[dict[str, float]], epoch: int) -> None:
        """Rewrite ``metrics.csv`` and add the ``epoch/`` scalars of the last row."""
        write_metrics_csv(history, self.out / "metrics.csv")
        self.board.scalars(history[-1], epoch, "epoch")

    def close(self) -> None:
        if self.steps_fh is not None:
            self.steps_fh.close()
        self.board.close()


def epoch_row(
    state: RunState, epoch: int, lr: float, iters_this_session: int, epoch_s: float
) -> dict[str, float]:
    """The ``metrics.csv`` row of ``epoch`` from the run state's sums (validation not yet)."""
    sums = state.epoch_sums
    n = max(1.0, sums.get("n", 0.0))
    row: dict[str, float] = {
        "epoch": epoch,
        "step": state.step,
        "lr": lr,
        "train_loss": sums.get("loss", math.nan) / n if sums.get("n") else math.nan,
    }
    # The loss's parts are named for what they hold (``loss_stage1`` is stage 1's loss, not a
    # Dice): columns ``train_loss_stage1``, ``train_aux_weight``... (losses/composite.py).
    for key, value in sums.items():
        if key not in ("loss", "n", "skipped"):
            row[f"train_{key}"] = value / n
    row["skipped"] = sums.get("skipped", 0.0)
    row["minutes"] = state.elapsed_s / 60
    row["it_per_s"] = iters_this_session / epoch_s if epoch_s > 0 else math.nan
    return row


def progress_bar(n_iters: int, done: int, epoch: int, epochs: int, enabled: bool) -> Any:
    """A tqdm bar over the iterations of ``epoch`` (``None`` when not ``enabled``)."""
    if not enabled:
        return None
    return tqdm(
        total=n_iters,
        initial=done,
        desc=f"epoch {epoch + 1}/{epochs}",
        unit="it",
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def start_lines(
    cfg: Config,
    *,
    n_params: int,
    split: dict[str, list[str]],
    n_validated: int,
    info: DistInfo,
    precision: str,
    iters_per_epoch: int,
    state: RunState,
) -> list[str]:
    """What a run is about to do: model and size, cases and split, device, precision, budget."""
    n_cases = sum(len(ids) for ids in split.values())
    split_text = f"train {len(split['train'])}, validation {len(split['val'])}"
    if n_validated < len(split["val"]):
        split_text += f" (validated on {n_validated})"
    if split.get("test"):
        split_text += f", test {len(split['test'])} (held out)"
    schedule = f"{cfg.train.epochs} epochs x {iters_per_epoch} iterations"
    budget_s = budget_seconds(cfg.train)
    if budget_s is None:
        budget = f"{schedule}, no time limit"
    else:
        decay = (
            "learning-rate decay ends with the budget"
            if cfg.train.time_schedule
            else "learning rate follows the epochs (train.time_schedule=false)"
        )
        budget = f"{budget_s / 60:g} min or {schedule}, whichever ends first; {decay}"
    lines = [
        f"model: {cfg.model.name}, {n_params:,} parameters",
        f"cases: {n_cases} labelled; {split_text} (data.split={cfg.data.split})",
        f"device: {info.device}" + (f" x {info.world_size} processes" if info.distributed else ""),
        f"precision: {precision} (train.precision={cfg.train.precision})",
        f"budget: {budget}",
    ]
    crops = crop_line(cfg)
    if crops:
        lines.append(crops)
    if cfg.train.ema_width:
        lines.append(
            f"weights: validated and saved as a moving average over about the last "
            f"{ema_share(cfg.train.ema_width):.0%} of the steps (train.ema_width="
            f"{cfg.train.ema_width:g})"
        )
    if state.step:
        lines.append(f"resuming at epoch {state.epoch + 1}, step {state.step}")
    return lines


def crop_line(cfg: Config) -> str:
    """The crop sizes of a run with early, smaller crops (``data.early_patch_size``), else ''."""
    early = early_crop_size(cfg.data)
    if early is None:
        return ""
    share = f"{cfg.data.early_patch_end:.0%}"
    return (
        f"crops: {crop_text(early)} over the first {share} of the run, "
        f"then {crop_text(cfg.data.patch_size)}"
    )


def crop_text(size: Sequence[int]) -> str:
    """A crop size as the training log writes it, e.g. ``32x32x32``."""
    return "x".join(str(s) for s in size)


def print_epoch(row: dict[str, float], state: RunState, epochs: int) -> None:
    """One line per epoch (with or without progress bars): the log of a batch job."""
    text = (
        f"epoch {int(row['epoch']) + 1}/{epochs}: step {int(row['step'])}"
        f"  loss {row['train_loss']:.4f}"
    )
    if "dice_mean" in row:
        text += (
            f"  val Dice WT {row['dice_WT']:.3f} TC {row['dice_TC']:.3f} ET {row['dice_ET']:.3f}"
            f" (mean {row['dice_mean']:.3f})"
        )
    text += f"  lr {row['lr']:.3g}  [{row['minutes']:.1f} min]"
    if state.finished and state.stop_reason != "epochs":
        text += f"  stopped: {state.stop_reason}"
    print(text, file=sys.stderr, flush=True)
