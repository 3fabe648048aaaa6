"""The data side of a run: cases, split, cache, the training dataset, its sampler and loader.

Adapters over :mod:`cascadeseg.data`: :func:`prepare_data` finds, splits and preprocesses the
cases and builds 3D crops or 2D slices after the registered network's ``spatial_dims``;
:class:`TrainingSampler` draws each epoch's ``(epoch, index)`` keys from ``(seed, epoch)`` alone (an
exact resume needs that); :func:`batch_to_device` moves a collated batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cascadeseg.config import Config, DataConfig, early_crop_size
from cascadeseg.data import case_balance, datasets, layouts, patch_check, splits
from cascadeseg.data.cache import PreprocessCache, WarmResult, resolve_cache_dir
from cascadeseg.data.layouts import CaseRef
from cascadeseg.data.missing import SequenceDropout
from cascadeseg.data.preprocess import PreprocessConfig, Preprocessed
from cascadeseg.errors import ConfigError, InputError
from cascadeseg.training import distributed as dist_utils
from cascadeseg.training.build import model_spatial_dims
from cascadeseg.training.distributed import DistInfo


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
    val_cases: list[Preprocessed]
    split: dict[str, list[str]]


def split_case_ids(
    ids: Sequence[str], cfg: Config, kinds: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """Train/val(/test) case ids from ``data.split``.

    ``kfold``: fold ``data.fold`` of ``data.folds`` (two-stage paper: 5-fold), stratified by
    ``kinds`` (each case's kind of tumour) when given; ``cunet``: the 3:1:1 train/val/test
    hold-out of the CU-Net paper; ``all``: every case trains, none validates (the two-stage
    paper's all-data models: fixed epochs, no early stopping).
    """
    if cfg.data.split == "all":
        return {"train": sorted(ids), "val": []}
    if cfg.data.split == "cunet":
        return splits.holdout_split(ids, ratios=(3, 1, 1), seed=cfg.seed)
    return splits.kfold_split(
        ids, k=cfg.data.folds, fold=cfg.data.fold, seed=cfg.seed, strata=kinds
    )


def stratifies_by_kind(data_cfg: DataConfig) -> bool:
    """Whether the split needs every case's kind of tumour (``data.split_stratify: kind``)."""
    return data_cfg.split == "kfold" and data_cfg.split_stratify == "kind"


def prepare_data(cfg: Config, data: Path, info: DistInfo, *, progress: bool = True) -> TrainingData:
    """Find, split and preprocess the cases of ``data``; build the training dataset.

    The dataset holds 3D crops or 2D axial slices after the ``spatial_dims`` of the network
    registered as ``model.name``. Rank 0 fills the preprocessing cache first, the other ranks
    then read it (no duplicate work, no concurrent writes).
    """
    data = Path(data)
    by_id = _labelled_cases(data, cfg.data)
    # A split stratified by kind reads every case's labels first: all are preprocessed (the
    # validation cases beyond train.val_cases too), then split.
    loaded: dict[str, Preprocessed] | None = None
    kinds = None
    if stratifies_by_kind(cfg.data):
        loaded = _load_cases(list(by_id.values()), data, cfg.data, info, progress=progress)
        kinds = {cid: case_balance.case_kind(case.label) for cid, case in loaded.items()}  # type: ignore[arg-type]  # labelled cases
    split = split_case_ids(list(by_id), cfg, kinds)
    if not split["train"]:
        raise InputError(f"{data}: the split leaves no training case ({len(by_id)} cases)")
    spatial_dims = model_spatial_dims(cfg.model.name)
    for key in ("bias_field_prob", "compartment_contrast_prob", "enhancement_erase_prob"):
        if spatial_dims != 3 and getattr(cfg.data, key) > 0:
            raise ConfigError(
                f"data.{key}: the augmentation is for 3D crops; "
                f"model {cfg.model.name!r} trains on 2D slices"
            )
    if spatial_dims != 3 and cfg.data.early_patch_size is not None:
        raise ConfigError(
            "data.early_patch_size: early, smaller crops are for 3D crops; "
            f"model {cfg.model.name!r} trains on 2D slices"
        )
    if spatial_dims != 3 and cfg.data.label_resampling == "soft":
        raise ConfigError(
            "data.label_resampling: soft region targets are for 3D crops; "
            f"model {cfg.model.name!r} trains on 2D slices (use regions)"
        )
    val_ids = split["val"][: cfg.train.val_cases] if cfg.train.val_cases else split["val"]
    if loaded is None:
        needed = [by_id[c] for c in split["train"] + val_ids]
        loaded = _load_cases(needed, data, cfg.data, info, progress=progress)
    train_cases = [loaded[c] for c in split["train"]]
    # Before any crop is drawn: a patch larger than every case's whole (resampled) grid, or
    # that cannot fit in memory. A patch larger than the brain box alone is fine: the crop is
    # padded with background, as the papers crop from the whole grid (CU-Net's 2D recipes pad
    # brain-cropped slices up to their patch).
    patch_check.check_patch_size(
        cfg.data.patch_size[: 3 if spatial_dims == 3 else 2],
        [case.geometry.resampled_shape for case in train_cases],
        batch_size=cfg.train.batch_size,
    )
    train_dataset = _train_dataset(train_cases, cfg.data, spatial_dims, seed=cfg.seed)
    if info.is_main:
        _print_case_balance(train_dataset)
    return TrainingData(
        train_dataset=train_dataset,
        val_cases=[loaded[c] for c in val_ids],
        split=split,
    )


def _print_case_balance(dataset: Dataset[Any]) -> None:
    """One line: the training cases of each kind of tumour and their share of the crops."""
    weights = getattr(dataset, "case_weights", None)
    if weights is None:
        return
    shares = case_balance.group_shares(dataset.kinds, weights)  # type: ignore[attr-defined]
    parts = [
        f"{kind}: {shares[kind][0]} case(s), {shares[kind][1]:.0%} of crops"
        for kind in case_balance.KINDS
        if kind in shares
    ]
    print("case balance: " + "; ".join(parts), flush=True)


def training_cache(
    data: Path, data_cfg: DataConfig, *, echo: Callable[[str], Any] = print
) -> PreprocessCache:
    """The preprocessing cache training reads for the cases of ``data`` under ``data_cfg``
    (``echo``: where a note about a fallback cache folder goes)."""
    folder = resolve_cache_dir(data, data_cfg.cache_dir, echo=echo)
    return PreprocessCache(folder, PreprocessConfig.from_data_config(data_cfg))


def warm_training_cache(
    data: Path, data_cfg: DataConfig, *, workers: int, progress: bool = True
) -> WarmResult:
    """Preprocess every labelled case of ``data`` into :func:`training_cache`, ``workers`` at a
    time, ahead of training (which then reuses them); cases that cannot be read are in the
    result's ``failed`` (training stops on them with their one-line error).

    Raises:
        InputError: ``data`` missing or without a labelled case.
    """
    refs = list(_labelled_cases(Path(data), data_cfg).values())
    return training_cache(Path(data), data_cfg).warm(refs, workers=workers, progress=progress)


def _labelled_cases(data: Path, data_cfg: DataConfig) -> dict[str, CaseRef]:
    """The cases of ``data`` that have a segmentation, by case id."""
    if not data.exists():
        raise InputError(f"{data}: data folder not found")
    refs = layouts.discover_cases(
        data, layout=data_cfg.layout, label_convention=data_cfg.label_convention
    )
    labelled = [r for r in refs if "seg" in r.files]
    if not labelled:
        raise InputError(f"{data}: no case has a segmentation (training needs labelled cases)")
    return {r.case_id: r for r in labelled}


def _load_cases(
    refs: Sequence[CaseRef], data: Path, data_cfg: DataConfig, info: DistInfo, *, progress: bool
) -> dict[str, Preprocessed]:
    """The preprocessed cases of ``refs`` by case id, through the preprocessing cache."""
    note: Callable[[str], Any] = print if info.is_main else (lambda _: None)
    cache = training_cache(data, data_cfg, echo=note)
    if info.is_main:
        # Rank 0 fills the cache (in worker processes); the other ranks wait, then only read.
        warmed = cache.warm(refs, workers=data_cfg.num_workers, progress=progress)
        if warmed.failed:
            cid, message = next(iter(warmed.failed.items()))
            raise InputError(f"{message} ({len(warmed.failed)} case(s) failed, first: {cid})")
    dist_utils.barrier(info)
    return {ref.case_id: cache.get(ref) for ref in refs}


def sequence_dropout_of(data_cfg: DataConfig) -> SequenceDropout | None:
    """The recipe's sequence dropout (``data.sequence_dropout`` > 0), else ``None``."""
    if data_cfg.sequence_dropout <= 0:
        return None
    return SequenceDropout(
        data_cfg.sequence_dropout, data_cfg.sequence_dropout_max, data_cfg.missing_fill
    )


def _train_dataset(
    train_cases: list[Preprocessed], data_cfg: DataConfig, spatial_dims: int, *, seed: int
) -> Dataset[Any]:
    """3D crops (``spatial_dims == 3``) or 2D axial slices of ``train_cases``, with the
    recipe's sequence dropout."""
    dropout = sequence_dropout_of(data_cfg)
    if spatial_dims == 3:
        return datasets.CropDataset3D(
            train_cases,
            patch_size=tuple(data_cfg.patch_size[:3]),
            foreground_prob=data_cfg.foreground_prob,
            foreground_sampling=data_cfg.foreground_sampling,
            crop_overhang=data_cfg.crop_overhang,
            crop_region=data_cfg.crop_region,
            seed=seed,
            bias_field_prob=data_cfg.bias_field_prob,
            bias_field_strength=data_cfg.bias_field_strength,
            bias_field_spacing_mm=data_cfg.bias_field_spacing_mm,
            bias_field_groups=data_cfg.bias_field_groups,
            bias_field_early_only=data_cfg.bias_field_early_only,
            compartment_contrast_prob=data_cfg.compartment_contrast_prob,
            compartment_contrast=data_cfg.compartment_contrast,
            compartment_contrast_channels=data_cfg.compartment_contrast_channels,
            enhancement_erase_prob=data_cfg.enhancement_erase_prob,
            sequence_dropout=dropout,
            case_balance=data_cfg.case_balance,
            early_patch_size=early_crop_size(data_cfg),
        )
    if len(data_cfg.patch_size) < 2:
        raise ConfigError(f"data.patch_size={list(data_cfg.patch_size)}: 2D needs (H, W)")
    return datasets.SliceDataset2D(
        train_cases,
        slice_size=(int(data_cfg.patch_size[0]), int(data_cfg.patch_size[1])),
        slice_context=data_cfg.slice_context,
        drop_empty=data_cfg.drop_empty_slices,
        seed=seed,
        sequence_dropout=dropout,
    )


class TrainingSampler(Sampler[tuple[int, ...]]):
    """``(epoch, index)`` keys of one epoch for one rank, from ``(seed, epoch)`` alone.

    An epoch draws ``samples_per_rank * world_size`` indices by concatenating random permutations
    of ``range(n_items)`` (so short epochs still see every item equally often over time and long
    ones repeat items), then gives rank ``r`` the indices ``r::world_size``, exactly as
    :class:`torch.utils.data.DistributedSampler` splits a list. ``start`` skips the samples a
    resumed epoch has already consumed. Keys carry the epoch, so the datasets of
    ``cascadeseg.data.datasets`` draw each item from ``(seed, epoch, index)`` also in persistent
    workers.

    ``cascadeseg.data.loaders.make_loader`` (DistributedSampler) has neither fixed-length
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
        #: False outside the sequence-dropout window (``data.sequence_dropout_start`` to
        #: ``_end``): the keys then carry a third element, 0, and the datasets drop nothing.
        self.dropout_on = True
        #: True while the run crops at ``data.early_patch_size``: the keys then carry a fourth
        #: element, 1.
        self.early = False

    def set_epoch(
        self, epoch: int, start: int = 0, *, dropout_on: bool = True, early: bool = False
    ) -> None:
        """Select the epoch, the number of this rank's samples already consumed in it,
        whether its samples may lose sequences and whether they are early, smaller crops."""
        self.epoch = epoch
        self.start = start
        self.dropout_on = dropout_on
        self.early = early

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

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        epoch = self.epoch
        flags: tuple[int, ...] = () if self.dropout_on else (0,)
        if self.early:
            flags = (int(self.dropout_on), 1)
        return iter((epoch, i, *flags) for i in self.epoch_indices()[self.start :])

    def __len__(self) -> int:
        return self.samples_per_rank - self.start


def make_train_loader(
    dataset: Dataset[Any], sampler: TrainingSampler, cfg: Config, device: torch.device
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
