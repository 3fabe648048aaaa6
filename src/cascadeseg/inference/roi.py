"""Flip TTA on the tumour's box only (issue 20): ``tta_region="tumour"``.

The case's first pass (the first member's identity flip) runs on the whole volume, as with
``tta_region="volume"``. The voxels where any region probability ``[WT, TC, ET]`` exceeds
``tta_region_threshold`` give a bounding box; it grows by ``tta_region_margin`` voxels on every
side and is rounded out to the network's size multiple, clipped to the volume. Every later pass
of the case (the other flips, the other members of the ensemble) runs on that crop only: the
crop is flipped, run, flipped back and added into the crop of the running sums. Outside the box
the first pass stands alone: the mean there is over 1 pass and its variance 0. When no voxel
exceeds the threshold, the case is background and no further pass runs.

Benchmarks of networks with random weights, whose first pass finds no tumour, give the box
instead (``TumourRegion.given``, set through ``predict_case(..., tumour_box=...)``): the
reference label's bounding box (:func:`label_box`), which is what a trained model's first pass
finds; the margin and the rounding are applied as above, and the first pass still runs on the
whole volume. Prediction itself never sets it.

The box is one per case (:class:`TumourRegion`), so every member of a paired snapshot ensemble
(snapshot ``i`` runs flip ``i``: :func:`~cascadeseg.inference.ensemble.flip_plan`) runs on the
box the first snapshot's identity pass found.

Boxes are half-open ``(lo, hi)`` voxel ranges, one per spatial axis (:data:`Box`). The
arithmetic (:func:`tumour_box`, :func:`grow_box`, :func:`network_crop`, :func:`image_box`) is
pure. 3D members only: a 2D member (axial slices) is refused with ``tta_region="tumour"``
(:func:`check_tta_region`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cascadeseg.errors import ConfigError
from cascadeseg.inference.loading import LoadedModel
from cascadeseg.inference.sliding import Pads, crop_padding
from cascadeseg.inference.tta import ProbabilityFn, flip_tta_sums

#: Where the flips after the case's first pass run: the whole volume, the tumour's box, or
#: ``auto`` (:func:`resolve_tta_region`: the box on the CPU, the volume on a GPU).
TTA_REGIONS: tuple[str, ...] = ("volume", "tumour", "auto")

#: ``((lo, hi), ...)``: a half-open voxel range per spatial axis.
Box = tuple[tuple[int, int], ...]

#: Output channels of every member: region probabilities ``[WT, TC, ET]``.
REGION_CHANNELS = 3


# --------------------------------------------------------------------------------------------
# box arithmetic (pure)


def tumour_box(probabilities: torch.Tensor | np.ndarray, threshold: float) -> Box | None:
    """The bounding box of the voxels where any channel exceeds ``threshold``.

    Args:
        probabilities: ``(K, *spatial)`` probabilities (e.g. ``(3, X, Y, Z)``).
        threshold: a voxel counts when any channel is ``> threshold``.

    Returns:
        ``((lo, hi), ...)`` per spatial axis (half-open), or ``None`` when no voxel counts.
    """
    hot = torch.as_tensor(probabilities).gt(threshold).any(dim=0)
    if not bool(hot.any()):
        return None
    box = []
    for axis in range(hot.ndim):
        others = tuple(a for a in range(hot.ndim) if a != axis)
        present = torch.nonzero(hot.any(dim=others) if others else hot).flatten()
        box.append((int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def label_box(label: np.ndarray) -> Box | None:
    """The bounding box of a label map's tumour voxels (``label > 0``), or ``None`` if none.

    Args:
        label: ``(*spatial)`` integer label map (any convention: 0 is background).
    """
    return tumour_box(np.asarray(label)[None] > 0, 0.5)


def grow_box(box: Box, margin: int, shape: Sequence[int]) -> Box:
    """``box`` grown by ``margin`` voxels on every side, clipped to ``[0, shape)``."""
    return tuple(
        (max(0, lo - margin), min(int(size), hi + margin)) for (lo, hi), size in zip(box, shape)
    )


def network_crop(box: Box, pads: Pads, multiple: int, padded_shape: Sequence[int]) -> Box:
    """The crop of the padded input that covers ``box`` (image coordinates).

    The box moves by the padding before each axis and is rounded out to ``multiple`` (its start
    down, its end up), clipped to ``padded_shape``. Since the padded shape is a multiple too,
    the crop's size is one and its start sits on the network's down-sampling grid, both from
    the front and, flipped, from the back: a flipped crop is pooled as the flipped volume is.
    An empty box gives an empty crop.
    """
    if box_voxels(box) == 0:
        return empty_box(len(box))
    crop = []
    for (lo, hi), (before, _), size in zip(box, pads, padded_shape):
        start = (lo + before) // multiple * multiple
        stop = min(int(size), math.ceil((hi + before) / multiple) * multiple)
        crop.append((start, max(start, stop)))
    return tuple(crop)


def image_box(crop: Box, pads: Pads, shape: Sequence[int]) -> Box:
    """A crop of the padded input (:func:`network_crop`) in image coordinates, clipped."""
    return tuple(
        (min(max(lo - before, 0), int(size)), max(min(hi - before, int(size)), 0))
        for (lo, hi), (before, _), size in zip(crop, pads, shape)
    )


def box_voxels(box: Box) -> int:
    """Voxels inside ``box`` (0 for an empty one)."""
    return math.prod(max(0, hi - lo) for lo, hi in box)


def box_slices(box: Box) -> tuple[slice, ...]:
    """``box`` as slices of the trailing spatial axes."""
    return tuple(slice(lo, hi) for lo, hi in box)


def empty_box(spatial_dims: int) -> Box:
    """A box with no voxel (nothing above the threshold: no further passes)."""
    return ((0, 0),) * spatial_dims


# --------------------------------------------------------------------------------------------
# the box of one case


@dataclass
class TumourRegion:
    """The box of one case, set by its first pass and shared by every later pass.

    Attributes:
        threshold: a voxel is tumour when any region probability exceeds it.
        margin: voxels added on every side of the tumour's box.
        box: image coordinates of the crop later passes run on; ``None`` until the first pass
            has run; an empty box when nothing exceeded the threshold.
        shape: spatial shape of the image (set with ``box``).
        given: benchmarks only: the tumour's box (image voxels, before the margin) used instead
            of the one the first pass finds (see the module docstring); ``None`` in prediction.
    """

    threshold: float
    margin: int
    box: Box | None = None
    shape: tuple[int, ...] = ()
    given: Box | None = None

    def decide(self, first: torch.Tensor, pads: Pads, multiple: int) -> None:
        """Set the box from the first pass: ``(1, 3, *padded)`` probabilities on the padded grid."""
        image = crop_padding(first, pads)[0]
        self.shape = tuple(int(s) for s in image.shape[1:])
        found = self.given if self.given is not None else tumour_box(image, self.threshold)
        if found is None:
            self.box = empty_box(len(self.shape))
            return
        grown = grow_box(found, self.margin, self.shape)
        crop = network_crop(grown, pads, multiple, first.shape[2:])
        self.box = image_box(crop, pads, self.shape)

    def record(self) -> dict[str, Any]:
        """What the case's JSON says: the box (image voxels, fraction of the volume)."""
        box = self.box or ()
        volume = math.prod(self.shape) if self.shape else 0
        voxels = box_voxels(box) if box else 0
        return {
            "threshold": self.threshold,
            "margin": self.margin,
            "box": [list(r) for r in box],
            "box_voxels": voxels,
            "box_fraction": round(voxels / volume, 6) if volume else 0.0,
            "box_given": self.given is not None,
        }


def resolve_tta_region(tta_region: str, device_type: str, members: Sequence[LoadedModel]) -> str:
    """``auto``: ``tumour`` on the CPU when every member is 3D, else ``volume``; other values
    as given.

    On the CPU the flips after the first pass are most of a case's time, and on the box they
    cost a quarter of it at BraTS size (held-out Dice within 0.005 of the whole-volume flips in
    the mean: docs/performance.md, lever Dice). On a GPU the 8 flips run stacked in one or two
    calls, so the box saves little there and the flips stay the paper's, exactly.
    """
    if tta_region != "auto":
        return tta_region
    cpu_3d = device_type == "cpu" and all(m.spatial_dims == 3 for m in members)
    return "tumour" if cpu_3d else "volume"


def case_region(tta_region: str, threshold: float, margin: int) -> TumourRegion | None:
    """A fresh :class:`TumourRegion` for one case, or ``None`` for ``tta_region="volume"``
    (``auto`` resolved first, :func:`resolve_tta_region`)."""
    if tta_region not in TTA_REGIONS or tta_region == "auto":
        raise ConfigError(f"tta_region must be 'volume' or 'tumour' here, got {tta_region!r}")
    return TumourRegion(threshold, margin) if tta_region == "tumour" else None


def check_tta_region(members: Sequence[LoadedModel], tta_region: str) -> None:
    """Refuse ``tta_region="tumour"`` for 2D members (slice by slice; not supported)."""
    if tta_region != "tumour":
        return
    for member in members:
        if member.spatial_dims != 3:
            raise ConfigError(
                f"{member.source}: tta_region 'tumour' runs 3D members only and this one is "
                f"{member.spatial_dims}D (axial slices); use tta_region 'volume'"
            )


# --------------------------------------------------------------------------------------------
# one member's passes


def region_flip_moments(
    fn: ProbabilityFn,
    x: torch.Tensor,
    region: TumourRegion,
    *,
    flips: Sequence[tuple[int, ...]],
    pads: Pads,
    multiple: int,
    flips_per_call: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, int, Box | None]:
    """One member's flip moments, the passes after the case's first on its box only.

    Args:
        fn: ``(B, C, *spatial) -> (B, 3, *spatial)`` probabilities (any shape that is a
            multiple of ``multiple``).
        x: ``(1, C, *padded)`` input, padded to ``multiple`` by ``pads``.
        region: the case's box; unset, this member's first flip is the case's first pass (on
            the whole volume) and sets it.
        flips: the flips this member runs.
        pads: the padding of ``x``.
        multiple: the network's size multiple.
        flips_per_call: flips stacked per call of ``fn`` (the crop's passes).

    Returns:
        ``(mean, mean_sq, passes, covers)``: ``(1, 3, *padded)`` float32 moments over this
        member's passes per voxel (a voxel outside the box: the first pass alone, or 0 where
        this member ran nothing there), the passes made, and the image box they cover
        (``None``: the whole volume).
    """
    flips = list(flips)
    counts = torch.zeros((1, 1, *x.shape[2:]), device=x.device)
    whole = region.box is None
    if whole:
        total, total_sq, passes = flip_tta_sums(fn, x, flips=flips[:1])
        counts += 1
        region.decide(total, pads, multiple)
        flips = flips[1:]
    else:
        total = torch.zeros((1, REGION_CHANNELS, *x.shape[2:]), device=x.device)
        total_sq = torch.zeros_like(total)
        passes = 0
    assert region.box is not None
    crop = network_crop(region.box, pads, multiple, x.shape[2:])
    index: tuple[Any, ...] = (..., *box_slices(crop))
    # A member of another multiple runs a larger crop; the sums count where it ran.
    covers = None if whole else image_box(crop, pads, region.shape)
    if flips and box_voxels(region.box):
        _, _, n = flip_tta_sums(
            fn,
            x[index],
            flips=flips,
            flips_per_call=flips_per_call,
            total=total[index],
            total_sq=total_sq[index],
        )
        counts[index] += n
        passes += n
    counts.clamp_(min=1)
    return total / counts, total_sq / counts, passes, covers
