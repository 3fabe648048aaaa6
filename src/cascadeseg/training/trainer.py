"""The training loop: :func:`train` goes from a recipe and a data folder to a run directory.

What happens, in order (rank 0 alone writes files and shows progress):

1. find the cases (``data.layouts``), split them (``data.splits``: k-fold or CU-Net 3:1:1) and
   save ``split.json``; preprocess every case once into the cache (``data.cache``);
2. build the model (``models.build_model``), the loss (``losses.build_loss``), the optimiser
   (:func:`build_optimizer`) and, with ``torchrun``, wrap the model in DistributedDataParallel;
3. epochs of ``iters_per_epoch`` iterations: the learning rate is set every iteration from the
   schedule (``training.schedules.lr_at`` at the fractional epoch); forward under autocast,
   loss in float32, backward (through a GradScaler for fp16), optional gradient clipping, step;
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
   ``train_aux_weight`` (CU-Net's omega), ``skipped, minutes, it_per_s`` and, on validated
   epochs, ``val_loss, dice_WT, dice_TC, dice_ET, dice_mean, val_cases``.

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
import csv
import dataclasses
import json
import math
import random
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from cascadeseg import __version__
from cascadeseg.config import OPTIMIZERS, Config, from_dict, save_config, to_dict
from cascadeseg.config import validate as validate_config
from cascadeseg.data.labels import REGIONS
from cascadeseg.errors import CascadesegError, ConfigError, InputError, ModelError
from cascadeseg.models.checkpoint import atomic_torch_save, load_checkpoint, make_checkpoint
from cascadeseg.runtime import autocast, resolve_precision, tune_device
from cascadeseg.training import distributed as dist_utils
from cascadeseg.training.distributed import DistInfo
from cascadeseg.training.monitor import warn_lws_coverage
from cascadeseg.training.validation import validate, validation_objective


class TrainingError(CascadesegError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and a remedy."""


class SimulatedKill(BaseException):
    """Raised by the ``_stop_after_steps`` test hook of :func:`train` to imitate a kill."""


STEPS_HEADER = "step,epoch,lr,loss\n"
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


# --------------------------------------------------------------------------------------------
# Small pure pieces


def check_config(cfg: Config) -> None:
    """Reject settings the trainer cannot run with (one-line :class:`ConfigError`).

    Every :class:`Config` is checked when it is built (:func:`cascadeseg.config.validate`);
    this re-runs those checks for configs built around them.
    """
    validate_config(cfg)


def build_optimizer(params: Any, optim_cfg: Any) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with momentum) from ``cfg.optim``, weight decay on every parameter.

    The two-stage paper's "l2 weight decay of 1e-5" with Adam is torch's coupled ``weight_decay``
    of :class:`torch.optim.Adam`; CU-Net's SGD uses the same L2 term (``lambda * psi`` of its
    Eq. 4). AdamW applies decoupled decay (Loshchilov & Hutter), the usual choice for new recipes.
    """
    name = optim_cfg.name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim_cfg.lr,
            momentum=optim_cfg.momentum,
            weight_decay=optim_cfg.weight_decay,
        )
    raise ConfigError(f"optim.name={optim_cfg.name!r}: expected one of {OPTIMIZERS}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


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
    measured step time ``step_s`` (:func:`cascadeseg.training.schedules.budget_fraction`); else
    it is the share of the time spent.
    """
    from cascadeseg.training.schedules import budget_fraction

    progress = epoch + iteration_in_epoch / max(1, iters_per_epoch)
    if budget_s:
        if step is None:
            fraction = min(1.0, elapsed_s / budget_s)
        else:
            fraction = budget_fraction(step, elapsed_s, budget_s, step_s)
        progress = max(progress, epochs * fraction)
    return float(progress)


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for iteration ``step`` of process ``rank`` (independent streams, no state)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint64)[0] >> 1)


def should_stop_early(val_losses: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    """True when the last ``patience`` validation losses all failed to beat the earlier minimum.

    CU-Net (sec. 3.2) trains "until there is an obvious uptrend in the validation loss"; patience
    as in Keras/Lightning ``EarlyStopping`` is the usual reading. ``patience <= 0`` never stops.
    """
    if patience <= 0 or len(val_losses) <= patience:
        return False
    best_before = min(val_losses[:-patience])
    return all(v > best_before - min_delta for v in val_losses[-patience:])


def to_float32(obj: Any) -> Any:
    """Floating tensors inside ``obj`` (tensor, tuple/NamedTuple, list, dict, dataclass) as float32.

    Model outputs come out of autocast in bf16/fp16; the losses are evaluated in float32.
    """
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: to_float32(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_float32(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float32(v) for v in obj)
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    return obj


def batch_to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move the tensors of a collated batch (a dict) to ``device``; other values pass through."""
    if isinstance(batch, dict):
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=True)
                if key == "image" and channels_last:
                    fmt = torch.channels_last_3d if value.ndim == 5 else torch.channels_last
                    value = value.contiguous(memory_format=fmt)
            out[key] = value
        return out
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return batch


# --------------------------------------------------------------------------------------------
# Sampling: a DistributedSampler that also knows fixed-length epochs and mid-epoch resume


class EpochSampler(Sampler[tuple[int, int]]):
    """``(epoch, index)`` keys of one epoch for one rank, from ``(seed, epoch)`` alone.

    An epoch draws ``samples_per_rank * world_size`` indices by concatenating random permutations
    of ``range(n_items)`` (so short epochs still see every item equally often over time and long
    ones repeat items), then gives rank ``r`` the indices ``r::world_size``, exactly as
    :class:`torch.utils.data.DistributedSampler` splits a list. ``start`` skips the samples a
    resumed epoch has already consumed. Keys carry the epoch, so the datasets of
    ``cascadeseg.data.datasets`` draw each item from ``(seed, epoch, index)`` also in persistent
    workers.

    ``cascadeseg.data.datasets.make_loader`` (DistributedSampler) has neither fixed-length
    epochs (``train.iters_per_epoch``) nor a mid-epoch start, which an exact resume needs;
    hence this sampler.
    """

    def __init__(
        self, n_items: int, samples_per_rank: int, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if n_items < 1:
            raise InputError("no training samples (every case was excluded?)")
        self.n_items = n_items
        self.samples_per_rank = samples_per_rank
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and the number of this rank's samples already consumed in it."""
        self.epoch = epoch
        self.start = start

    def epoch_indices(self) -> list[int]:
        """This rank's full index list of the current epoch (before skipping ``start``)."""
        total = self.samples_per_rank * self.world_size
        chunks: list[np.ndarray] = []
        count = 0
        block = 0
        while count < total:
            rng = np.random.default_rng([self.seed, self.epoch, block])
            chunks.append(rng.permutation(self.n_items))
            count += self.n_items
            block += 1
        indices = np.concatenate(chunks)[:total]
        return [int(i) for i in indices[self.rank :: self.world_size]]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter((epoch, i) for i in self.epoch_indices()[self.start :])

    def __len__(self) -> int:
        return self.samples_per_rank - self.start


# --------------------------------------------------------------------------------------------
# Data: cases, split, cache, datasets (adapters over cascadeseg.data)


@dataclass
class TrainingData:
    """What the loop needs from the data layer.

    Attributes:
        train_dataset: torch Dataset of training samples (crops or slices); items are dicts with
            at least ``image``; ``set_epoch(epoch)`` selects the epoch's augmentation draws.
        val_cases: preprocessed validation cases (``image (4, x, y, z)``, ``label``,
            ``brain_mask``) on the preprocessed grid.
        split: case ids per subset (``train``, ``val`` and, for the CU-Net split, ``test``).
    """

    train_dataset: Dataset[Any]
    val_cases: list[Any]
    split: dict[str, list[str]]


def split_case_ids(ids: Sequence[str], cfg: Config) -> dict[str, list[str]]:
    """Train/val(/test) case ids from ``data.split``.

    ``kfold``: fold ``data.fold`` of ``data.folds`` (two-stage paper: 5-fold); ``cunet``: the
    3:1:1 train/val/test hold-out of the CU-Net paper; ``all``: every case trains, none
    validates (the two-stage paper's all-data models: fixed epochs, no early stopping).
    """
    from cascadeseg.data import splits

    if cfg.data.split == "all":
        return {"train": sorted(ids), "val": []}
    if cfg.data.split == "cunet":
        return splits.holdout_split(ids, ratios=(3, 1, 1), seed=cfg.seed)
    return splits.kfold_split(ids, k=cfg.data.folds, fold=cfg.data.fold, seed=cfg.seed)


def prepare_data(cfg: Config, data: Path, info: DistInfo, *, progress: bool = True) -> TrainingData:
    """Find, split and preprocess the cases of ``data``; build the training dataset.

    Rank 0 fills the preprocessing cache first, the other ranks then read it (no duplicate work,
    no concurrent writes).
    """
    from cascadeseg.data import datasets, layouts
    from cascadeseg.data.cache import PreprocessCache, resolve_cache_dir
    from cascadeseg.data.preprocess import PreprocessConfig

    data = Path(data)
    if not data.exists():
        raise InputError(f"{data}: data folder not found")
    refs = layouts.discover_cases(
        data, layout=cfg.data.layout, label_convention=cfg.data.label_convention
    )
    labelled = [r for r in refs if "seg" in r.files]
    if not labelled:
        raise InputError(f"{data}: no case has a segmentation (training needs labelled cases)")
    by_id = {r.case_id: r for r in labelled}
    split = split_case_ids(list(by_id), cfg)
    if not split["train"]:
        raise InputError(f"{data}: the split leaves no training case ({len(by_id)} cases)")

    spatial_dims = _model_spatial_dims(cfg)
    if spatial_dims != 3 and cfg.data.bias_field_prob > 0:
        raise ConfigError(
            "data.bias_field_prob: the bias-field augmentation is for 3D crops; "
            f"model {cfg.model.name!r} trains on 2D slices"
        )
    note = print if info.is_main else (lambda _: None)
    cache_root = resolve_cache_dir(data, cfg.data.cache_dir, echo=note)
    cache = PreprocessCache(cache_root, PreprocessConfig.from_data_config(cfg.data))
    val_ids = split["val"][: cfg.train.val_cases] if cfg.train.val_cases else split["val"]
    needed = [by_id[c] for c in split["train"] + val_ids]
    if info.is_main:
        # Rank 0 fills the cache (in worker processes); the other ranks wait, then only read.
        warmed = cache.warm(needed, workers=cfg.data.num_workers, progress=progress)
        if warmed.failed:
            cid, message = next(iter(warmed.failed.items()))
            raise InputError(f"{message} ({len(warmed.failed)} case(s) failed, first: {cid})")
    dist_utils.barrier(info)
    loaded = {ref.case_id: cache.get(ref) for ref in needed}

    train_cases = [loaded[c] for c in split["train"]]
    val_cases = [loaded[c] for c in val_ids]
    # Before any crop is drawn: a patch larger than every case's whole (resampled) grid, or
    # that cannot fit in memory. A patch larger than the brain box alone is fine: the crop is
    # padded with background, as the papers crop from the whole grid (CU-Net's 2D recipes pad
    # brain-cropped slices up to their patch).
    datasets.check_patch_size(
        cfg.data.patch_size[: 3 if spatial_dims == 3 else 2],
        [case.geometry.resampled_shape for case in train_cases],
        batch_size=cfg.train.batch_size,
    )
    if spatial_dims == 3:
        dataset: Dataset[Any] = datasets.CropDataset3D(
            train_cases,
            patch_size=tuple(cfg.data.patch_size[:3]),
            foreground_prob=cfg.data.foreground_prob,
            crop_overhang=cfg.data.crop_overhang,
            crop_region=cfg.data.crop_region,
            seed=cfg.seed,
            bias_field_prob=cfg.data.bias_field_prob,
            bias_field_strength=cfg.data.bias_field_strength,
            bias_field_spacing_mm=cfg.data.bias_field_spacing_mm,
        )
    else:
        if len(cfg.data.patch_size) < 2:
            raise ConfigError(f"data.patch_size={list(cfg.data.patch_size)}: 2D needs (H, W)")
        dataset = datasets.SliceDataset2D(
            train_cases,
            slice_size=(int(cfg.data.patch_size[0]), int(cfg.data.patch_size[1])),
            slice_context=cfg.data.slice_context,
            drop_empty=cfg.data.drop_empty_slices,
            seed=cfg.seed,
        )
    return TrainingData(train_dataset=dataset, val_cases=val_cases, split=split)


def make_train_loader(
    dataset: Dataset[Any], sampler: EpochSampler, cfg: Config, device: torch.device
) -> DataLoader[Any]:
    """A DataLoader over ``dataset`` drawing this rank's ``(epoch, index)`` keys from ``sampler``.

    Workers are persistent (started once; the keys tell them the epoch) and prefetch 4 batches
    each, so the model does not wait on crops; memory is pinned on CUDA. The loader's private
    generator keeps the global torch RNG untouched.
    """
    workers = max(0, cfg.data.num_workers)
    options: dict[str, Any] = {}
    if workers > 0:
        options = {"persistent_workers": True, "prefetch_factor": 4}
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
        **options,
    )


def _model_spatial_dims(cfg: Config) -> int:
    from cascadeseg.models.registry import model_class

    return int(getattr(model_class(cfg.model.name), "spatial_dims", 3))


# --------------------------------------------------------------------------------------------
# Model, loss


def build_training_model(cfg: Config) -> nn.Module:
    """The registered model with ``model.args``, the checkpointing flag and the slice context.

    2D models get ``data.slice_context`` as their own ``slice_context`` argument (CU-Net) or as
    ``4 * (2c + 1)`` input channels (the others).

    Raises:
        ConfigError: an option the model does not support, or ``model.args`` the model rejects.
    """
    from cascadeseg.models import build_model, model_defaults

    defaults = model_defaults(cfg.model.name)
    args = dict(cfg.model.args)
    if cfg.train.checkpointing:
        if "checkpointing" not in defaults:
            raise ConfigError(f"train.checkpointing: model {cfg.model.name!r} does not support it")
        args["checkpointing"] = True
    if cfg.data.slice_context:
        if _model_spatial_dims(cfg) != 2:
            raise ConfigError("data.slice_context applies to 2D models only")
        if "slice_context" in defaults:
            args.setdefault("slice_context", cfg.data.slice_context)
        else:
            args.setdefault("in_channels", 4 * (2 * cfg.data.slice_context + 1))
    try:
        return build_model(cfg.model.name, **args)
    except ModelError as exc:
        # Unknown or rejected arguments: name the recipe key they came from.
        raise ConfigError(f"model.args: {exc}") from None


def saved_model_args(model: nn.Module) -> dict[str, Any]:
    """Constructor kwargs to store in checkpoints (gradient checkpointing off for inference)."""
    args = dict(getattr(model, "model_args", {}))
    if "checkpointing" in args:
        args["checkpointing"] = False
    return args


# --------------------------------------------------------------------------------------------
# Run state, checkpoints, logs


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
    epoch_sums: dict[str, float] = field(default_factory=dict)
    finished: bool = False
    stop_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def _truncate_steps(path: Path, step: int) -> None:
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
    import matplotlib

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


class _TensorBoard:
    """TensorBoard scalars when ``tensorboard`` is installed (silently off otherwise)."""

    def __init__(self, log_dir: Path, enabled: bool, purge_step: int) -> None:
        self.writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
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
            except for :data:`RESUMABLE_KEYS`).
        progress: show progress bars (rank 0 only).
        _stop_after_steps: testing hook: raise :class:`KeyboardInterrupt` once this many
            iterations are done in total, raise :class:`SimulatedKill` as a kill would
            (checkpoints written so far stay).

    Returns:
        The run directory.

    Raises:
        ConfigError, InputError: bad recipe or data. TrainingError: non-finite loss.
    """
    check_config(cfg)
    out = Path(out)
    info = dist_utils.init_distributed(cfg.train.device)
    try:
        session = _Session(cfg, Path(data), out, info, resume, progress)
        session.run(_stop_after_steps)
        return out
    finally:
        if info.distributed:
            with contextlib.suppress(Exception):
                dist_utils.cleanup(info)


def _resume_state(cfg: Config, out: Path) -> tuple[dict[str, Any] | None, Config]:
    last = out / "checkpoints" / "last.pt"
    if not last.is_file():
        raise ConfigError(f"{last}: nothing to resume (no checkpoint)")
    ckpt = load_checkpoint(last)
    saved = ckpt.get("config") or {}
    given = to_dict(cfg)
    diffs = sorted(k for k in _diff_keys(saved, given) if k not in RESUMABLE_KEYS)
    if diffs:
        raise ConfigError(
            f"{last}: config differs from the run being resumed in {', '.join(diffs)}"
        )
    return ckpt, from_dict(given, Config)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys: list[str] = []
        for k in set(a) | set(b):
            keys += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return keys
    return [] if a == b else [prefix.rstrip(".")]


class _Session:
    """The objects of one training session and the steps of its loop (one rank's view)."""

    def __init__(
        self, cfg: Config, data: Path, out: Path, info: DistInfo, resume: bool, progress: bool
    ) -> None:
        from cascadeseg.losses import build_loss

        self.info = info
        self.main = info.is_main
        self.out = out
        self.ckpt_dir = out / "checkpoints"
        ckpt: dict[str, Any] | None = None
        if resume:
            ckpt, cfg = _resume_state(cfg, out)
        elif (self.ckpt_dir / "last.pt").exists():
            raise ConfigError(f"{out}: already holds a run (use --resume, or choose another --out)")
        self.cfg = cfg
        self.progress = progress and self.main
        if self.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        seed_everything(cfg.seed)

        self.data = prepare_data(cfg, data, info, progress=self.progress)
        if self.main:
            from cascadeseg.data.splits import save_split

            save_split(self.data.split, out / "split.json")

        device = info.device
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
        self.plain_model = model
        self.loss_fn = build_loss(model, cfg.loss)
        self.optimizer = build_optimizer(model.parameters(), cfg.optim)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.state = RunState()
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            self.state = RunState(**ckpt["state"])
            set_rng_states(ckpt["rng"])
            _reopen_if_extended(self.state, cfg)
        # Stage 2 gets no gradient while stage 1 trains alone: DDP must not wait for it.
        self.model = dist_utils.wrap_model(
            model, info, find_unused_parameters=cfg.train.stage1_first > 0
        )
        if cfg.train.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]

        dataset = self.data.train_dataset
        n_items = len(dataset)  # type: ignore[arg-type]
        world_batch = cfg.train.batch_size * info.world_size
        self.iters_per_epoch = cfg.train.iters_per_epoch or max(1, n_items // world_batch)
        self.sampler = EpochSampler(
            n_items,
            self.iters_per_epoch * cfg.train.batch_size,
            seed=cfg.seed,
            rank=info.rank,
            world_size=info.world_size,
        )
        self.loader = make_train_loader(dataset, self.sampler, cfg, device)
        if self.main and not resume:
            _check_paper_conditions(cfg, self.data, self.iters_per_epoch * world_batch / n_items)
        self.budget_s = cfg.train.max_minutes * 60 if cfg.train.max_minutes else None
        self.part_keys: list[str] | None = None
        #: Training time at the last step, from rank 0's clock (the same on every rank).
        self.last_elapsed_s: float | None = None
        #: Wall seconds per training step on this rank (None at first; :meth:`measure_step`),
        #: for the number of steps a time budget holds (schedules.budget_fraction).
        self.step_s: float | None = None
        self.first_step_end: float | None = None
        self.steps_measured = 0
        #: ``step_s`` of rank 0 as shared at the last step (the same on every rank).
        self.last_step_s: float | None = None

        self.steps_csv = out / "steps.csv"
        self.steps_fh: Any = None
        if self.main:
            _truncate_steps(self.steps_csv, self.state.step)
            if not self.steps_csv.exists():
                self.steps_csv.write_text(STEPS_HEADER)
            self.steps_fh = self.steps_csv.open("a")
            write_metrics_csv(self.state.history, out / "metrics.csv")
        self.board = _TensorBoard(
            out / "tensorboard", self.main and cfg.train.tensorboard, self.state.step
        )
        if self.main:
            for line in _start_lines(self):
                print(line, file=sys.stderr, flush=True)
        self.session_start = time.monotonic()
        self.elapsed_at_start = self.state.elapsed_s

    # ---------------------------------------------------------------- the loop

    def run(self, stop_after_steps: int | None = None) -> None:
        """Epochs until the last one, an early stop or the time budget."""
        cfg, state = self.cfg, self.state
        try:
            while not state.finished and state.epoch < cfg.train.epochs:
                epoch = state.epoch
                self.set_phase(epoch)
                self.data.train_dataset.set_epoch(epoch)  # type: ignore[attr-defined]
                self.sampler.set_epoch(epoch, start=state.iter_in_epoch * cfg.train.batch_size)
                self.model.train()
                bar = _progress_bar(
                    self.iters_per_epoch, state.iter_in_epoch, epoch, cfg, self.progress
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
                    if (
                        every
                        and state.step % every == 0
                        and state.iter_in_epoch < self.iters_per_epoch
                    ):
                        self.save_last()
                    if stop_after_steps is not None and state.step >= stop_after_steps:
                        raise SimulatedKill(f"stopped after {state.step} steps (test hook)")
                if bar is not None:
                    bar.close()
                self.end_epoch(epoch, out_of_time, iterations, time.monotonic() - epoch_start)
        finally:
            if self.steps_fh is not None:
                self.steps_fh.close()
            self.board.close()
        if self.main:
            if state.history:
                plot_curves(state.history, self.out / "curves.png")
            _write_summary(self.out, state)

    def set_phase(self, epoch: int) -> None:
        """Stage 1 alone or the whole cascade for this epoch (``train.stage1_first``).

        Decided at the start of an epoch and kept in the run state, so a run resumed inside an
        epoch stays in that epoch's phase.
        """
        cfg, state = self.cfg, self.state
        if cfg.train.stage1_first <= 0:
            return
        if state.iter_in_epoch == 0:
            # In the first epoch of a session the saved run state gives the time spent (the
            # same checkpoint on every rank), later the clock shared at the last step.
            elapsed = state.elapsed_s if self.last_elapsed_s is None else self.last_elapsed_s
            progress = schedule_epoch(
                epoch,
                0,
                self.iters_per_epoch,
                epochs=cfg.train.epochs,
                elapsed_s=elapsed,
                budget_s=self.budget_s if cfg.train.time_schedule else None,
                step=state.step,
                step_s=self.last_step_s,
            )
            stage1_only = progress < cfg.train.stage1_first * cfg.train.epochs
            if stage1_only != state.stage1_only:
                self.part_keys = None  # the loss reports other parts in the other phase
            state.stage1_only = stage1_only
        self.plain_model.set_stage1_only(state.stage1_only)  # type: ignore[operator]

    def step(self, batch: Any, epoch: int, bar: Any) -> bool:
        """One iteration; returns True when the time budget is spent."""
        cfg, state, info = self.cfg, self.state, self.info
        device = info.device
        # Dropout and LWS sampling draw from the global generator: re-seed it from the step so a
        # resumed run repeats the same draws.
        torch.manual_seed(step_seed(cfg.seed, info.rank, state.step))
        batch = batch_to_device(batch, device, cfg.train.channels_last)
        with autocast(self.precision, device):
            output = self.model(batch["image"])
        total, parts = self.loss_fn(to_float32(output), batch, epoch=epoch)
        if self.part_keys is None:
            self.part_keys = sorted(k for k in parts if k != "total")
        keys = self.part_keys
        elapsed = self.elapsed_at_start + time.monotonic() - self.session_start
        # One all-reduce per step: losses (for the logs), any non-finite loss (every rank then
        # skips or stops together), and rank 0's clock (one learning rate, one stop decision).
        finite = bool(torch.isfinite(total))
        local = torch.tensor(
            [
                float(total.detach()) if finite else 0.0,
                0.0 if finite else 1.0,
                elapsed if info.is_main else 0.0,
                (self.step_s or 0.0) if info.is_main else 0.0,
                *[float(parts.get(k, 0.0)) if finite else 0.0 for k in keys],
            ],
            dtype=torch.float64,
        )
        reduced = dist_utils.all_reduce_sum(local, info).cpu().tolist()
        nonfinite = reduced[1] > 0
        loss_value = math.nan if nonfinite else reduced[0] / info.world_size
        part_values = [v / info.world_size for v in reduced[4:]]
        elapsed = reduced[2]
        progress_epoch = schedule_epoch(
            epoch,
            state.iter_in_epoch,
            self.iters_per_epoch,
            epochs=cfg.train.epochs,
            elapsed_s=elapsed,
            budget_s=self.budget_s if cfg.train.time_schedule else None,
            step=state.step,
            step_s=reduced[3] or None,
        )
        self.last_elapsed_s = elapsed
        self.last_step_s = reduced[3] or None
        lr = _lr_at(progress_epoch, cfg)
        set_lr(self.optimizer, lr)
        sums = state.epoch_sums
        if nonfinite:
            if not cfg.train.skip_nonfinite:
                local_value = float(total.detach())
                raise TrainingError(
                    f"non-finite loss ({local_value}) at epoch {epoch}, iteration "
                    f"{state.iter_in_epoch} (step {state.step}, lr {lr:.3g}); lower optim.lr, "
                    "set optim.grad_clip, use train.precision=fp32, or set "
                    "train.skip_nonfinite=true to skip such steps"
                )
            sums["skipped"] = sums.get("skipped", 0.0) + 1
        else:
            self.scaler.scale(total).backward()
            if cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            sums["loss"] = sums.get("loss", 0.0) + loss_value
            for key, value in zip(keys, part_values):
                sums[key] = sums.get(key, 0.0) + value
            sums["n"] = sums.get("n", 0.0) + 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.steps_fh is not None:
            self.steps_fh.write(f"{state.step},{epoch},{lr:.8g},{loss_value!r}\n")
            self.steps_fh.flush()
        self.board.scalars({"loss": loss_value, "lr": lr}, state.step, "train")
        state.step += 1
        state.iter_in_epoch += 1
        state.elapsed_s = self.elapsed_at_start + time.monotonic() - self.session_start
        self.measure_step()
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
        return self.budget_s is not None and elapsed >= self.budget_s

    def measure_step(self) -> None:
        """Update ``step_s``, the wall time a step costs, after a step ends.

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

    def end_epoch(self, epoch: int, out_of_time: bool, iterations: int, seconds: float) -> None:
        """Log, validate, decide whether to stop, and write the checkpoints of ``epoch``."""
        cfg, state = self.cfg, self.state
        row = _epoch_row(state, epoch, self.optimizer, cfg, iterations, seconds)
        # Epochs of stage 1 alone: their validation scores stage 1, and their weights hold an
        # untrained stage 2, so they are neither "best", nor snapshots, nor a reason to stop.
        cascade_epoch = not state.stage1_only
        if cfg.train.stage1_first > 0:
            row["stage1_only"] = float(state.stage1_only)
        last_epoch = epoch + 1 == cfg.train.epochs
        validate_now = cfg.train.val_every > 0 and (
            (epoch + 1) % cfg.train.val_every == 0 or last_epoch or out_of_time
        )
        if validate_now and self.data.val_cases:
            row.update(
                validate(self.model, self.data.val_cases, cfg, self.info, precision=self.precision)
            )
            if cfg.train.monitor == "objective":
                row["val_objective"] = validation_objective(
                    self.model, self.loss_fn, self.data.val_cases, cfg, self.info, epoch=epoch
                )
            self.model.train()
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
        if not out_of_time:
            state.epoch += 1
            state.iter_in_epoch = 0
            state.epoch_sums = {}
        if out_of_time or stop_early or state.epoch >= cfg.train.epochs:
            state.finished = True
            state.stop_reason = (
                "time_budget" if out_of_time else "early_stop" if stop_early else "epochs"
            )
        if self.main:
            write_metrics_csv(state.history, self.out / "metrics.csv")
            self.board.scalars(row, epoch, "epoch")
            extra = {"val": {k: v for k, v in row.items() if k.startswith("dice_")}, "epoch": epoch}
            if improved or (state.best_epoch < 0 and state.finished):
                self.save_weights(self.ckpt_dir / "best.pt", extra)
            if cfg.train.snapshots > 0 and cascade_epoch:
                self.save_weights(self.ckpt_dir / f"snapshot_{epoch:04d}.pt", extra)
                _prune_snapshots(self.ckpt_dir, cfg.train.snapshots)
            self.save_last()
            _print_epoch(row, state, cfg.train.epochs)
        dist_utils.barrier(self.info)

    # ---------------------------------------------------------------- checkpoints

    def save_last(self) -> None:
        """``checkpoints/last.pt``: everything a resume needs (rank 0 only)."""
        if not self.main:
            return
        state = self.state
        full = make_checkpoint(
            model_name=self.cfg.model.name,
            model_args=saved_model_args(self.plain_model),
            model_state=self.plain_model.state_dict(),
            config=to_dict(self.cfg),
            epoch=state.epoch,
            optimizer=self.optimizer.state_dict(),
            scheduler={
                "epoch": state.epoch,
                "iteration": state.step,
                "lr": float(self.optimizer.param_groups[0]["lr"]),
            },
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
            iteration=state.step,
            rng=rng_states(),
            state=state.as_dict(),
            history=list(state.history),
        )
        atomic_torch_save(full, self.ckpt_dir / "last.pt")

    def save_weights(self, path: Path, extra: dict[str, Any]) -> None:
        """An inference checkpoint (model, config, no optimiser state) at ``path``."""
        weights = make_checkpoint(
            model_name=self.cfg.model.name,
            model_args=saved_model_args(self.plain_model),
            model_state=self.plain_model.state_dict(),
            config=to_dict(self.cfg),
            epoch=self.state.epoch,
            extra=extra,
            iteration=self.state.step,
        )
        atomic_torch_save(weights, path)


def _check_paper_conditions(cfg: Config, data: TrainingData, passes_per_epoch: float) -> None:
    """Warnings about a recipe that cannot do what the paper's procedure needs (rank 0)."""
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


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's (legacy global) and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may draw from the global one
    torch.manual_seed(seed)


def _reopen_if_extended(state: RunState, cfg: Config) -> None:
    """A finished run resumed with more epochs or a larger time budget goes on."""
    if not state.finished:
        return
    budget_s = cfg.train.max_minutes * 60 if cfg.train.max_minutes else None
    if state.stop_reason == "time_budget" and (budget_s is None or state.elapsed_s < budget_s):
        state.finished = False
    elif state.stop_reason == "epochs" and state.epoch < cfg.train.epochs:
        state.finished = False
    if not state.finished:
        state.stop_reason = ""


def _lr_at(progress_epoch: float, cfg: Config) -> float:
    from cascadeseg.training.schedules import lr_at

    return float(lr_at(progress_epoch, cfg.optim, cfg.train.epochs))


def _epoch_row(
    state: RunState,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    iters_this_session: int,
    epoch_s: float,
) -> dict[str, float]:
    sums = state.epoch_sums
    n = max(1.0, sums.get("n", 0.0))
    row: dict[str, float] = {
        "epoch": epoch,
        "step": state.step,
        "lr": optimizer.param_groups[0]["lr"],
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


def _progress_bar(n_iters: int, done: int, epoch: int, cfg: Config, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=n_iters,
        initial=done,
        desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
        unit="it",
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _start_lines(session: _Session) -> list[str]:
    """What a run is about to do: model and size, cases and split, device, precision, budget."""
    from cascadeseg.models.outputs import count_parameters

    cfg, split = session.cfg, session.data.split
    n_params = count_parameters(session.plain_model, training=True)
    n_cases = sum(len(ids) for ids in split.values())
    split_text = f"train {len(split['train'])}, validation {len(split['val'])}"
    if len(session.data.val_cases) < len(split["val"]):
        split_text += f" (validated on {len(session.data.val_cases)})"
    if split.get("test"):
        split_text += f", test {len(split['test'])} (held out)"
    schedule = f"{cfg.train.epochs} epochs x {session.iters_per_epoch} iterations"
    if session.budget_s is None:
        budget = f"{schedule}, no time limit"
    else:
        decay = (
            "learning-rate decay ends with the budget"
            if cfg.train.time_schedule
            else "learning rate follows the epochs (train.time_schedule=false)"
        )
        budget = f"{session.budget_s / 60:g} min or {schedule}, whichever ends first; {decay}"
    lines = [
        f"model: {cfg.model.name}, {n_params:,} parameters",
        f"cases: {n_cases} labelled; {split_text} (data.split={cfg.data.split})",
        f"device: {session.info.device}"
        + (f" x {session.info.world_size} processes" if session.info.distributed else ""),
        f"precision: {session.precision} (train.precision={cfg.train.precision})",
        f"budget: {budget}",
    ]
    if session.state.step:
        lines.append(f"resuming at epoch {session.state.epoch + 1}, step {session.state.step}")
    return lines


def _print_epoch(row: dict[str, float], state: RunState, epochs: int) -> None:
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


def _prune_snapshots(ckpt_dir: Path, keep: int) -> None:
    snaps = sorted(ckpt_dir.glob("snapshot_*.pt"))
    for old in snaps[:-keep]:
        old.unlink(missing_ok=True)


def _write_summary(out: Path, state: RunState) -> None:
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


__all__ = [
    "EpochSampler",
    "RunState",
    "TrainingError",
    "build_optimizer",
    "check_config",
    "read_summary",
    "should_stop_early",
    "train",
    "validate",
]
