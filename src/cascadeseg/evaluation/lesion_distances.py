"""Distances behind the lesion-wise HD95 and NSD of the two BraTS rule sets (pure functions).

* :func:`pair_metrics_panoptica`: Dice, HD95 and NSD of one matched pair as panoptica computes
  them (6-connected erosion borders, pooled 95th percentile; NSD at ``min(spacing)``).
* :func:`surfel_hd95`: the BraTS 2023 code's HD95, DeepMind surface-distance
  ``compute_robust_hausdorff`` (area-weighted surface elements on the voxel-corner grid).

See :mod:`cascadeseg.evaluation.lesions` and ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage

from cascadeseg.evaluation.metrics import dice
from cascadeseg.evaluation.surface import bounding_box, surface_distances


def _spacing3(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers, got {spacing}")
    return values[0], values[1], values[2]


# --------------------------------------------------------------------------- distances (panoptica)


def pair_metrics_panoptica(
    ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[float, float, float]:
    """``(dice, hd95, nsd)`` of two non-empty masks cropped with a one-voxel pad."""
    overlap = dice(pred, ref)
    # The global metrics' border distances (6-connected erosion borders, as medpy/panoptica).
    pred_to_ref, ref_to_pred = surface_distances(pred, ref, spacing)
    hd95 = float(np.percentile(np.concatenate([ref_to_pred, pred_to_ref]), 95))
    tol = min(spacing)
    # panoptica's _nsd_from_pair: (tp_a + tp_b) / (tp_a + tp_b + fp + fn) with fractions per
    # surface, i.e. the mean of the two within-tolerance fractions.
    frac_a = np.count_nonzero(pred_to_ref <= tol) / pred_to_ref.size
    frac_b = np.count_nonzero(ref_to_pred <= tol) / ref_to_pred.size
    nsd = float((frac_a + frac_b) / (frac_a + frac_b + (1 - frac_a) + (1 - frac_b)))
    return overlap, hd95, nsd


# ------------------------------------------------------------------------ distances (brats2023)


@lru_cache(maxsize=8)
def _surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area (mm^2) of the surface element of each of the 256 2x2x2 neighbour codes.

    DeepMind's surface-distance table (the one the BraTS 2023 code ships), as MONAI carries it
    (``create_table_neighbour_code_to_surface_area``, "adapted from deepmind/surface-distance");
    taken from MONAI rather than copied here. Imported lazily: only the brats2023 HD95 needs it.
    """
    from monai.metrics.utils import create_table_neighbour_code_to_surface_area

    table, _ = create_table_neighbour_code_to_surface_area(spacing)
    return np.asarray(table.cpu().numpy(), dtype=np.float64)


# The 2023 code's neighbour-code kernel (DeepMind surface-distance, ``compute_surface_distances``).
_CODE_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]], dtype=np.int32)


def _surfels(mask: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surface-element positions (bool grid) and their areas, on a crop padded by one at the end."""
    codes = ndimage.correlate(mask.astype(np.int32), _CODE_KERNEL, mode="constant", cval=0)
    border = (codes != 0) & (codes != 255)
    return border, areas[codes[border]]


def _robust_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """DeepMind's ``compute_robust_hausdorff`` for one direction: the area-weighted percentile."""
    if distances.size == 0:
        return math.inf
    order = np.argsort(distances, kind="stable")
    cum = np.cumsum(areas[order]) / np.sum(areas)
    idx = int(np.searchsorted(cum, percent / 100.0))
    return float(distances[order][min(idx, distances.size - 1)])


def surfel_hd95(
    ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], percent: float = 95.0
) -> float:
    """HD95 of the BraTS 2023 code (DeepMind ``compute_robust_hausdorff``); ``inf`` if one is empty.

    Surface elements live on the voxel-corner grid (2x2x2 neighbour codes), each weighted by its
    area; the ``percent`` percentile is taken per direction and the larger one returned.

    Args:
        ref: binary mask ``(X, Y, Z)``.
        pred: binary mask of the same shape.
        spacing: voxel size in mm.
    """
    spacing3 = _spacing3(spacing)
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    box = bounding_box(ref | pred, pad=0)
    if box is None:
        return math.inf
    # DeepMind pads the tight box with one zero voxel at the high end of each axis.
    shape = tuple(s.stop - s.start + 1 for s in box)
    crops = []
    for m in (ref, pred):
        c = np.zeros(shape, dtype=bool)
        c[:-1, :-1, :-1] = m[box]
        crops.append(c)
    areas = _surfel_area_table(spacing3)
    border_r, area_r = _surfels(crops[0], areas)
    border_p, area_p = _surfels(crops[1], areas)
    if not border_r.any() or not border_p.any():
        return math.inf
    r_to_p = ndimage.distance_transform_edt(~border_p, sampling=spacing3)[border_r]
    p_to_r = ndimage.distance_transform_edt(~border_r, sampling=spacing3)[border_p]
    return max(
        _robust_percentile(r_to_p, area_r, percent), _robust_percentile(p_to_r, area_p, percent)
    )
