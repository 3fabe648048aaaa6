"""Ensembles: which flips each member runs, and the members' probabilities averaged.

An ensemble is the list of :class:`~cascadeseg.inference.loading.LoadedModel` that the ``--model``
arguments name (:func:`cascadeseg.inference.loading.load_models`). The snapshots of one run form a
*snapshot ensemble* (:func:`flip_plan`): by default (``paired``) snapshot ``i`` runs flip ``i``
only, as the two-stage paper does (8 snapshots, 8 flips, 8 passes; other counts:
:func:`cascadeseg.inference.tta.paired_flip_indices`); ``product`` runs every flip on every
snapshot (64 passes for 8 snapshots). Every other member (a ``best.pt``, a lone checkpoint, an
ONNX file) runs all flips in both modes.

Every member weighs the same in the mean (:class:`MomentSum`, :func:`average_probabilities`); the
voxel-wise variance over all passes of all members is the uncertainty map. Stored post-processing
thresholds of several members become one by their median.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cascadeseg.errors import ConfigError
from cascadeseg.inference.loading import LoadedModel
from cascadeseg.inference.tta import flip_combinations, paired_flip_indices

#: How the snapshots of one run share the TTA flips (see :func:`flip_plan`).
ENSEMBLE_MODES: tuple[str, ...] = ("paired", "product")


# --------------------------------------------------------------------------------------------
# snapshot ensembles


def is_snapshot(member: LoadedModel) -> bool:
    """Whether ``member`` is a training snapshot (``RUN/checkpoints/snapshot_*.pt``)."""
    name = member.source.name
    return member.run_dir is not None and name.startswith("snapshot_") and name.endswith(".pt")


def flip_plan(
    members: Sequence[LoadedModel], mode: str = "paired", tta: bool = True
) -> list[list[tuple[int, ...]]]:
    """The TTA flips each member runs.

    Args:
        members: the ensemble, in ``--model`` order (a run's snapshots sorted by name).
        mode: ``paired``: the snapshots of each run directory share the flips out
            (:func:`cascadeseg.inference.tta.paired_flip_indices`: snapshot ``i`` with flip
            ``i`` for 8 snapshots, the two-stage paper's procedure); ``product``: every member
            runs every flip.
        tta: without TTA every member runs the identity only (one pass each), in both modes.

    Returns:
        One list of flips (items of :func:`cascadeseg.inference.tta.flip_combinations`) per
        member. The ensemble mean gives every member the same weight, each member's map being
        the mean over its own passes (so with 3 snapshots and 8 flips, each snapshot weighs 1/3
        whether it ran 3 flips or 2).
    """
    if mode not in ENSEMBLE_MODES:
        raise ConfigError(f"ensemble mode must be one of {ENSEMBLE_MODES}, got {mode!r}")
    identity: list[tuple[int, ...]] = [()]
    plan = [flip_combinations(m.spatial_dims) if tta else list(identity) for m in members]
    if mode == "product" or not tta:
        return plan
    runs: dict[Path, list[int]] = {}
    for index, member in enumerate(members):
        if is_snapshot(member):
            assert member.run_dir is not None
            runs.setdefault(member.run_dir.resolve(), []).append(index)
    for indices in runs.values():
        flips = flip_combinations(members[indices[0]].spatial_dims)
        for index, share in zip(indices, paired_flip_indices(len(indices), len(flips))):
            plan[index] = [flips[j] for j in share]
    return plan


# --------------------------------------------------------------------------------------------
# averaging


class MomentSum:
    """Running sums of the members' first and second moments; every member weighs the same.

    :meth:`add` one member's ``(mean, mean_of_squares)`` over its passes (e.g. ``(3, X, Y, Z)``
    float32 arrays); :meth:`result` gives the ensemble mean and the voxel-wise variance over all
    passes of all members, as float32 arrays of that shape. A member whose passes cover only a
    box (``tta_region="tumour"``, :mod:`~cascadeseg.inference.roi`) is added with it: each voxel
    is then the mean over the members that ran there.
    """

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.total_sq: np.ndarray | None = None
        self.count = 0
        self.boxes: list[tuple[Any, ...]] = []  # indices (..., slices) of partial members

    def add(
        self,
        mean: np.ndarray,
        mean_sq: np.ndarray,
        covers: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """Add one member's moments (the arrays are copied, never kept).

        Args:
            mean, mean_sq: the member's moments.
            covers: ``None``: the member ran on every voxel; else ``[[lo, hi], ...]`` of the
                trailing axes it ran on (its values outside are ignored; an empty box adds
                nothing).
        """
        index: tuple[Any, ...] = (...,)
        if covers is not None:
            index = (..., *(slice(int(lo), int(hi)) for lo, hi in covers))
        if self.total is None or self.total_sq is None:
            self.total, self.total_sq = np.zeros_like(mean), np.zeros_like(mean_sq)
        self.total[index] += mean[index]
        self.total_sq[index] += mean_sq[index]
        if covers is None:
            self.count += 1
        else:
            self.boxes.append(index)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, variance)`` float32 over the members added (at least one)."""
        if self.total is None or self.total_sq is None:
            raise ValueError("MomentSum.result needs at least one member")
        count: float | np.ndarray = self.count
        if self.boxes:
            count = np.full(self.total.shape, self.count, dtype=np.float32)
            for box in self.boxes:
                count[box] += 1
            count = np.maximum(count, 1)
        mean = self.total / count
        variance = np.maximum(self.total_sq / count - mean**2, 0.0)
        return mean.astype(np.float32), variance.astype(np.float32)


def average_probabilities(
    probabilities: Sequence[np.ndarray | torch.Tensor],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and voxel-wise variance of several members' probabilities.

    Args:
        probabilities: ``N`` arrays of identical shape, e.g. ``(3, X, Y, Z)`` ``[WT, TC, ET]``.

    Returns:
        ``(mean, variance)`` float32 arrays of that shape; the variance is the population
        variance over the ``N`` members (0 for a single member).
    """
    if not probabilities:
        raise ValueError("average_probabilities needs at least one array")
    arrays = [
        p.detach().float().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
        for p in probabilities
    ]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError(f"shapes differ: {[a.shape for a in arrays]}")
    total = np.zeros(shape, dtype=np.float64)
    total_sq = np.zeros(shape, dtype=np.float64)
    for a in arrays:
        total += a
        total_sq += np.square(a, dtype=np.float64)
    mean = total / len(arrays)
    variance = np.maximum(total_sq / len(arrays) - mean**2, 0.0)
    return mean.astype(np.float32), variance.astype(np.float32)


# --------------------------------------------------------------------------------------------
# stored thresholds of several members


def ensemble_et_min_voxels(members: Sequence[LoadedModel]) -> int | None:
    """One stored threshold for an ensemble: the median of the members' stored values
    (fold runs each tune their own; their median is robust to one odd fold), or ``None``."""
    values = [m.et_min_voxels for m in members if m.et_min_voxels is not None]
    if not values:
        return None
    return round(statistics.median(values))


def ensemble_min_lesion_voxels(members: Sequence[LoadedModel]) -> dict[str, int] | None:
    """Per region, the median of the members' stored thresholds (as
    :func:`ensemble_et_min_voxels`), or ``None`` when no member stores any."""
    stored = [m.min_lesion_voxels for m in members if m.min_lesion_voxels is not None]
    if not stored:
        return None
    regions = sorted({r for values in stored for r in values})
    return {r: round(statistics.median([v[r] for v in stored if r in v])) for r in regions}
