"""What a run carries across iterations and sessions: its state, its randomness, its end.

* :class:`RunState`: counters, history, best epoch, stop decision (saved in ``last.pt``);
* seeds and RNG states: :func:`seed_everything`, :func:`step_seed`, :func:`rng_states`,
  :func:`set_rng_states`;
* resume: :func:`open_run` checks the run directory and the config against the saved one
  (:data:`RESUMABLE_KEYS` may differ), :func:`reopen_if_extended`;
* the end: :func:`should_stop_early`, :func:`prune_snapshots`, ``summary.json``
  (:func:`write_summary`, :func:`read_summary`).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cascadeseg import __version__
from cascadeseg.config import Config, TrainConfig, from_dict, to_dict
from cascadeseg.errors import ConfigError, InputError
from cascadeseg.models.checkpoint import load_checkpoint
from cascadeseg.training.schedules import budget_seconds

# Keys that may differ between the saved config and the one given on ``--resume``: they change
# how long or where a run goes, not what it computes.
RESUMABLE_KEYS = (
    "train.epochs",
    "train.max_minutes",
    "train.time_schedule",
    "train.device",
    "train.checkpoint_every",
    "train.tensorboard",
    "data.num_workers",
    "data.cache_dir",
)


@dataclass
class RunState:
    """Everything the loop carries between iterations and across a resume.

    Attributes:
        epoch: the epoch in progress (0-based); equals the number of finished epochs at a boundary.
        iter_in_epoch: iterations of ``epoch`` already done.
        step: iterations done in total.
        elapsed_s: training wall time spent so far, summed over resumed sessions (s).
        history: one dict per finished epoch (the rows of ``metrics.csv``).
        best_dice: best mean validation Dice so far (-1 before any validation).
        best_epoch: the epoch of ``best_dice`` (-1 before any).
        stage1_only: the epoch in progress trains a cascade's stage 1 alone
            (``train.stage1_first``).
        dropout_on: the epoch in progress may drop sequences (inside the window
            ``data.sequence_dropout_start`` to ``_end``).
        early_crops: the epoch in progress crops at ``data.early_patch_size`` (before
            ``data.early_patch_end`` of the run).
        epoch_sums: running sums of the epoch's losses (``loss``, parts, ``skipped``, ``n``).
        finished: training reached its end (all epochs, early stop or budget).
        stop_reason: why it ended (``epochs``, ``early_stop``, ``time_budget``).
    """

    epoch: int = 0
    iter_in_epoch: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    best_dice: float = -1.0
    best_epoch: int = -1
    stage1_only: bool = False
    dropout_on: bool = True
    early_crops: bool = False
    epoch_sums: dict[str, float] = field(default_factory=dict)
    finished: bool = False
    stop_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def end_epoch(self, *, out_of_time: bool, stop_early: bool, epochs: int) -> None:
        """Move past the epoch in progress (unless the budget cut it) and decide the end.

        A budget-stopped epoch stays in progress, so a resume with a larger budget finishes it.
        """
        if not out_of_time:
            self.epoch += 1
            self.iter_in_epoch = 0
            self.epoch_sums = {}
        if out_of_time or stop_early or self.epoch >= epochs:
            self.finished = True
            self.stop_reason = (
                "time_budget" if out_of_time else "early_stop" if stop_early else "epochs"
            )


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's (legacy global) and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may draw from the global one
    torch.manual_seed(seed)


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for iteration ``step`` of process ``rank`` (independent streams, no state)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint64)[0] >> 1)


def rng_states() -> dict[str, Any]:
    """Torch (CPU, CUDA), numpy and python RNG states as tensors and lists (weights_only-safe)."""
    np_state: Any = np.random.get_state()  # noqa: NPY002 - the legacy global state is what we save
    py_state = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` saved."""
    torch.set_rng_state(states["torch"].cpu())
    nps = states["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            nps["keys"].numpy().astype(np.uint32),
            int(nps["pos"]),
            int(nps["has_gauss"]),
            float(nps["cached_gaussian"]),
        )
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def open_run(cfg: Config, out: Path, resume: bool) -> tuple[dict[str, Any] | None, Config]:
    """The checkpoint to resume from (``None`` for a new run) and the config to run with.

    Raises:
        ConfigError: ``resume`` without ``checkpoints/last.pt``, a config that differs from the
            saved one outside :data:`RESUMABLE_KEYS`, or a new run in a folder that holds one.
    """
    last = out / "checkpoints" / "last.pt"
    if not resume:
        if last.exists():
            raise ConfigError(f"{out}: already holds a run (use --resume, or choose another --out)")
        return None, cfg
    if not last.is_file():
        raise ConfigError(f"{last}: nothing to resume (no checkpoint)")
    ckpt = load_checkpoint(last)
    saved = ckpt.get("config") or {}
    given = to_dict(cfg)
    diffs = sorted(k for k in diff_keys(saved, given) if k not in RESUMABLE_KEYS)
    if diffs:
        raise ConfigError(
            f"{last}: config differs from the run being resumed in {', '.join(diffs)}"
        )
    return ckpt, from_dict(given, Config)


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between the nested dicts ``a`` and ``b``."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys: list[str] = []
        for k in set(a) | set(b):
            keys += diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return keys
    return [] if a == b else [prefix.rstrip(".")]


def reopen_if_extended(state: RunState, train_cfg: TrainConfig) -> None:
    """A finished run resumed with more epochs or a larger time budget goes on."""
    if not state.finished:
        return
    budget_s = budget_seconds(train_cfg)
    if state.stop_reason == "time_budget" and (budget_s is None or state.elapsed_s < budget_s):
        state.finished = False
    elif state.stop_reason == "epochs" and state.epoch < train_cfg.epochs:
        state.finished = False
    if not state.finished:
        state.stop_reason = ""


def should_stop_early(val_losses: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    """True when the last ``patience`` validation losses all failed to beat the earlier minimum.

    CU-Net (sec. 3.2) trains "until there is an obvious uptrend in the validation loss"; patience
    as in Keras/Lightning ``EarlyStopping`` is the usual reading. ``patience <= 0`` never stops.
    """
    if patience <= 0 or len(val_losses) <= patience:
        return False
    best_before = min(val_losses[:-patience])
    return all(v > best_before - min_delta for v in val_losses[-patience:])


def prune_snapshots(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` latest ``snapshot_EEEE.pt`` of ``ckpt_dir``."""
    snaps = sorted(ckpt_dir.glob("snapshot_*.pt"))
    for old in snaps[:-keep]:
        old.unlink(missing_ok=True)


def write_summary(out: Path, state: RunState) -> None:
    """``summary.json``: epochs and steps done, minutes, why it stopped, best and last Dice."""
    last_val = next((r for r in reversed(state.history) if "dice_mean" in r), None)
    summary = {
        "version": __version__,
        "epochs_done": len(state.history),
        "steps": state.step,
        "minutes": round(state.elapsed_s / 60, 3),
        "stop_reason": state.stop_reason,
        "best_epoch": state.best_epoch,
        "best_dice_mean": state.best_dice if state.best_epoch >= 0 else None,
        "final_val": {
            k: v for k, v in (last_val or {}).items() if k.startswith("dice_") or k == "val_loss"
        },
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "summary.json")


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The ``summary.json`` of a finished run."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise InputError(f"{path}: no training summary (run not finished?)")
    return dict(json.loads(path.read_text()))
