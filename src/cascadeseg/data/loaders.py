"""A plain ``DataLoader`` over the datasets of :mod:`cascadeseg.data.datasets` whose items
depend only on (seed, epoch, index), whatever the number of workers.

The trainer uses its own sampler (:mod:`cascadeseg.training.data`: early crops, the sequence
dropout window, resumable mid-epoch); this loader is for code of the Python API that wants the
datasets' items without the trainer. Call :func:`set_loader_epoch` at the start of every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` pairs from a base sampler, so workers know the epoch.

    Without shuffling the order is ``0..n-1``; with it, a permutation drawn from
    ``default_rng([seed, epoch])`` (a function of the epoch only, so a resumed run repeats it).
    A base sampler with ``set_epoch`` (``DistributedSampler``) is told the epoch too.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        base: Sampler | None = None,
    ) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = int(seed)
        self.base = base
        self.epoch = 0
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.base is not None and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    def _indices(self) -> Iterator[int]:
        if self.base is not None:
            return iter(self.base)
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            return iter(int(i) for i in order)
        return iter(range(n))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self._indices():
            yield (epoch, int(index))

    def __len__(self) -> int:
        if self.base is not None:
            return len(self.base)  # type: ignore[arg-type]
        return len(self.dataset)  # type: ignore[arg-type]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 2,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    distributed: bool = False,
    *,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` whose items depend only on (seed, epoch, index).

    With ``distributed`` and ``torch.distributed`` initialised, each process reads its own
    share through ``DistributedSampler`` (shuffled with ``seed + epoch`` by torch). Workers are
    persistent (started once, not every epoch); memory is pinned when CUDA is available. Call
    :func:`set_loader_epoch` at the start of each epoch.

    Args:
        dataset: a :class:`CropDataset3D` / :class:`SliceDataset2D` (or any map-style dataset
            accepting ``(epoch, index)`` keys).
        batch_size: items per batch (per process).
        num_workers: loader worker processes (0: in the main process).
        shuffle: shuffle the order each epoch.
        seed: seed of the order.
        epoch: the first epoch (a resumed run passes the epoch it resumes at).
        distributed: split the data over the processes of an initialised process group.
        drop_last: drop the last incomplete batch.
    """
    base: Sampler | None = None
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        base = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed, epoch=epoch, base=base)
    # The loader's own generator seeds the workers' torch RNG; a private one keeps the global
    # torch RNG (model init, dropout) untouched by the number of epochs or workers.
    generator = torch.Generator().manual_seed(int(seed))
    options: dict[str, Any] = {}
    if num_workers > 0:
        options = {"persistent_workers": True, "prefetch_factor": 2}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=generator,
        **options,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a loader made by :func:`make_loader` (its sampler and dataset) the epoch."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
