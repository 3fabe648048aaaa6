"""BraTS segmentation metrics: Dice, sensitivity, specificity and HD95 (pure functions).

Definitions (CU-Net paper Eq. 5; HD95 as the official BraTS evaluation computes it):

* ``dice = 2 |P ∧ T| / (|P| + |T|)``; both masks empty -> 1.
* ``sensitivity = |P ∧ T| / |T|``; empty reference -> NaN (undefined, left out of means).
* ``specificity = |¬P ∧ ¬T| / |¬T|``; a reference without negatives -> NaN.
* ``hd95``: borders are the voxels of a mask that a binary erosion with the 6-connected (cross)
  structuring element removes (``mask XOR erode(mask)``); the Euclidean distance transform of the
  complement of one border, evaluated at the other border, gives the distance of every border
  voxel to the nearest border voxel of the other mask; the distances of *both* directions are
  pooled into one list and its 95th percentile is taken (``numpy.percentile``, linear
  interpolation). This is exactly medpy's ``medpy.metric.binary.hd95`` (loli/medpy,
  ``medpy/metric/binary.py``: ``numpy.percentile(numpy.hstack((hd1, hd2)), 95)``) and panoptica's
  ``_compute_hausdorff_distance95`` (BrainLesion/panoptica, ``metrics/hausdorff_distance.py``), on
  which the current ``brats-evaluate`` package is built. It is *not* MONAI's
  ``compute_hausdorff_distance(percentile=95)``, which takes the maximum of the two directed 95th
  percentiles and so is never smaller than the pooled value.
* Units: distances use the voxel spacing (mm) from the header, as the issue asks. panoptica's
  distance transform ignores spacing (its HD95 is in voxels); on BraTS data (1 mm isotropic)
  the two agree exactly. medpy with ``voxelspacing`` agrees for any spacing.
* Empty masks (BraTS convention): both empty -> HD95 0; exactly one empty -> HD95
  :data:`BRATS_EMPTY_HD95` = 373.1287 mm, the diagonal of the 240 x 240 x 155 grid
  (panoptica returns ``inf``, which the BraTS parser maps to 373/374).

Speed: :func:`case_metrics` crops to the bounding box of ``pred | ref`` (plus one voxel, so
erosions and distance transforms on the crop equal those on the full grid, see
:func:`bounding_box`), counts all confusions of the 4 x 4 internal labels with one
``numpy.bincount``, derives the true negatives arithmetically from the full volume's size, and runs
distance transforms only for regions where both masks are non-empty, on each region's own box;
where the masks are spread thin over a large box (lesions far apart), nearest border distances
come from a k-d tree over the border voxels instead (same exact values, cost by border size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from cascadeseg.data.labels import NUM_CLASSES, REGION_LABELS, REGIONS

#: HD95 when exactly one of the masks is empty: the diagonal of the 240 x 240 x 155 BraTS grid in
#: mm (``sqrt(240**2 + 240**2 + 155**2) = 373.12866...``), the value of the BraTS 2017-2021 code.
BRATS_EMPTY_HD95: float = math.sqrt(240**2 + 240**2 + 155**2)

#: The 12 per-case metrics in the column order of ``metrics.csv`` (after ``case``).
METRIC_NAMES: tuple[str, ...] = tuple(
    f"{metric}_{region.lower()}"
    for metric in ("dice", "hd95", "sens", "spec")
    for region in REGIONS
)
#: Volumes in mL reported after the 12 metrics, prediction then reference per region.
VOLUME_NAMES: tuple[str, ...] = tuple(
    f"vol_{region.lower()}_{side}_ml" for region in REGIONS for side in ("pred", "ref")
)

# Box voxels per border voxel above which surface_distances uses a k-d tree instead of two
# distance transforms (both exact; measured break-even on a 240 x 240 x 155 grid about 10-50).
_KDTREE_RATIO = 30


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool, copy=False)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|P∧T| / (|P|+|T|)`` (CU-Net Eq. 5); 1.0 when both masks are empty.

    Args:
        pred: binary mask of any shape (non-zero = foreground).
        ref: binary mask of the same shape.
    """
    p, r = _as_bool(pred), _as_bool(ref)
    return _dice_from_counts(
        int(np.count_nonzero(p & r)), int(np.count_nonzero(p & ~r)), int(np.count_nonzero(~p & r))
    )


def region_dice(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """:func:`dice` of each region of stacked masks.

    Args:
        pred: ``(R, ...)`` binary masks, e.g. regions ``[WT, TC, ET]`` of a volume.
        ref: ``(R, ...)`` binary masks of the same shape.

    Returns:
        ``(R,)`` float64 Dice per region (1.0 where both masks of a region are empty).
    """
    if np.shape(pred) != np.shape(ref):
        raise ValueError(f"shapes differ: {np.shape(pred)} vs {np.shape(ref)}")
    return np.array([dice(p, r) for p, r in zip(pred, ref)], dtype=np.float64)


def soft_region_dice(probs: np.ndarray, ref: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Soft Dice with squared denominators (two-stage paper Eq. 2) of each region, in float64.

    ``2 sum(P R) / (sum(P^2) + sum(R^2) + eps)`` per region, for probabilities rather than
    masks (the differentiable training loss is :mod:`cascadeseg.losses.dice`); a region whose
    denominator is at most ``eps`` (empty in both) scores 1, as :func:`dice` does.

    Args:
        probs: ``(R, ...)`` probabilities in [0, 1].
        ref: ``(R, ...)`` binary references.
        eps: denominator epsilon.

    Returns:
        ``(R,)`` float64 soft Dice per region.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(np.shape(probs)[0], -1)
    r = np.asarray(ref, dtype=np.float64).reshape(np.shape(ref)[0], -1)
    denom = (p * p).sum(1) + (r * r).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > eps, 2 * (p * r).sum(1) / (denom + eps), 1.0)


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """Sensitivity ``|P∧T| / |T|`` (CU-Net Eq. 5); NaN when the reference is empty."""
    p, r = _as_bool(pred), _as_bool(ref)
    return _sensitivity_from_counts(int(np.count_nonzero(p & r)), int(np.count_nonzero(~p & r)))


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    """Specificity ``|¬P∧¬T| / |¬T|`` (CU-Net Eq. 5); NaN when the reference has no negatives."""
    p, r = _as_bool(pred), _as_bool(ref)
    return _specificity_from_counts(int(np.count_nonzero(~p & ~r)), int(np.count_nonzero(p & ~r)))


def _dice_from_counts(tp: int, fp: int, fn: int) -> float:
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def _sensitivity_from_counts(tp: int, fn: int) -> float:
    return math.nan if tp + fn == 0 else tp / (tp + fn)


def _specificity_from_counts(tn: int, fp: int) -> float:
    return math.nan if tn + fp == 0 else tn / (tn + fp)


def bounding_box(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...] | None:
    """The smallest box holding every non-zero voxel of ``mask``, grown by ``pad`` voxels.

    The box is clipped to the array. With ``pad >= 1`` an erosion computed on the crop equals the
    erosion on the full array (the voxels just outside the mask are zero either way, and at the
    array's edge both see scipy's ``border_value=0``), and a distance transform on the crop is
    exact because every feature voxel lies inside it.

    Args:
        mask: ``(X, Y, Z)`` array (any dtype, non-zero = inside).
        pad: margin in voxels.

    Returns:
        A tuple of slices, or ``None`` when the mask is empty.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        # Project once onto the XY plane, then read X and Y from the small projection: two
        # passes over the volume instead of three.
        xy = np.any(mask, axis=2)
        projections = [np.any(xy, axis=1), np.any(xy, axis=0), np.any(mask, axis=(0, 1))]
    else:
        projections = [
            np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != k))
            for k in range(mask.ndim)
        ]
    if not projections[0].any():
        return None
    box = []
    for axis_any, size in zip(projections, mask.shape):
        idx = np.flatnonzero(axis_any)
        box.append(slice(max(int(idx[0]) - pad, 0), min(int(idx[-1]) + 1 + pad, size)))
    return tuple(box)


def erode_cross(mask: np.ndarray) -> np.ndarray:
    """Binary erosion with the 6-connected cross, outside the array counted as background.

    Equal to ``scipy.ndimage.binary_erosion(mask, generate_binary_structure(ndim, 1))`` (the
    tests check it), written as six shifted ANDs because that is about 5x faster than scipy's
    general erosion on a 240 x 240 x 155 grid, and borders are needed for every HD95.

    Args:
        mask: bool array of any number of dimensions.
    """
    mask = np.asarray(mask, dtype=bool)
    out = mask.copy()
    for axis in range(mask.ndim):
        o, m = np.moveaxis(out, axis, 0), np.moveaxis(mask, axis, 0)  # views: writes go to out
        o[1:] &= m[:-1]
        o[:-1] &= m[1:]
        o[0] = False
        o[-1] = False
    return out


def _border(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: ``mask XOR erode(mask)`` with the 6-connected cross (medpy, panoptica)."""
    return mask ^ erode_cross(mask)


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances between the borders of two non-empty masks, in both directions.

    Args:
        pred: non-empty binary mask, any number of dimensions.
        ref: non-empty binary mask of the same shape.
        spacing: voxel size per axis (mm); ``None`` means 1 (distances in voxels).

    Returns:
        ``(pred_to_ref, ref_to_pred)``: float64 arrays, one distance per border voxel of ``pred``
        (to the nearest border voxel of ``ref``) and per border voxel of ``ref``.

    Raises:
        ValueError: a mask is empty or the shapes differ.
    """
    p, r = _as_bool(pred), _as_bool(ref)
    if p.shape != r.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {r.shape}")
    if not p.any() or not r.any():
        raise ValueError("surface distances need two non-empty masks")
    box = bounding_box(p | r, pad=1)
    assert box is not None
    p, r = p[box], r[box]
    sampling = None if spacing is None else tuple(float(s) for s in spacing)
    border_p, border_r = _border(p), _border(r)
    n_border = int(np.count_nonzero(border_p)) + int(np.count_nonzero(border_r))
    if n_border * _KDTREE_RATIO < p.size:
        # Masks spread over a large box (lesions far apart, distant false positives): a k-d
        # tree over the border voxels costs O(n log n) in the number of border voxels, where
        # two distance transforms cost the volume of the box. Both give the exact Euclidean
        # distance to the nearest border voxel of the other mask.
        scale = np.ones(p.ndim) if sampling is None else np.asarray(sampling, dtype=np.float64)
        points_p = np.argwhere(border_p) * scale
        points_r = np.argwhere(border_r) * scale
        to_ref = cKDTree(points_r).query(points_p)[0]
        to_pred = cKDTree(points_p).query(points_r)[0]
        return np.asarray(to_ref, dtype=np.float64), np.asarray(to_pred, dtype=np.float64)
    # scipy's EDT measures the distance to the nearest zero, hence the complement of the border.
    to_ref = ndimage.distance_transform_edt(~border_r, sampling=sampling)[border_p]
    to_pred = ndimage.distance_transform_edt(~border_p, sampling=sampling)[border_r]
    return np.asarray(to_ref, dtype=np.float64), np.asarray(to_pred, dtype=np.float64)


def hd95(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    percentile: float = 95.0,
    empty_value: float = BRATS_EMPTY_HD95,
) -> float:
    """95th percentile Hausdorff distance as the official BraTS evaluation computes it.

    Both directions' border distances are pooled and the percentile of the pooled list is taken
    (medpy ``hd95`` and panoptica; MONAI instead takes the max of two directed percentiles).
    See the module docstring and ``docs/metrics.md``.

    Args:
        pred: binary mask ``(X, Y, Z)`` (any number of dimensions works).
        ref: binary mask of the same shape.
        spacing: voxel size per axis in mm; ``None`` gives distances in voxels (panoptica).
        percentile: the percentile, 95 for HD95 (100 gives the Hausdorff distance).
        empty_value: result when exactly one mask is empty (BraTS: 373.13 mm).

    Returns:
        HD95 in mm (voxels when ``spacing`` is ``None``); 0.0 when both masks are empty.
    """
    p, r = _as_bool(pred), _as_bool(ref)
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return 0.0
    if has_p != has_r:
        return float(empty_value)
    to_ref, to_pred = surface_distances(p, r, spacing)
    return float(np.percentile(np.concatenate([to_ref, to_pred]), percentile))


def _sparse_borders(
    label: np.ndarray, points: np.ndarray, values: np.ndarray, labels: Sequence[int]
) -> np.ndarray:
    """Border voxels (cross erosion, outside = background) of ``label in labels``, sparsely.

    Args:
        label: ``(X, Y, Z)`` uint8 label crop.
        points: ``(N, 3)`` voxel indices of every non-zero voxel that may be in the region.
        values: ``label`` at ``points``.
        labels: the region's label values.

    Returns:
        ``(M, 3)`` indices of the region's voxels with a 6-neighbour outside the region (or
        outside the array): the voxels ``mask XOR erode(mask)`` selects.
    """
    inside = np.isin(values, labels)
    pts = points[inside]
    border = np.zeros(len(pts), dtype=bool)
    upper = np.asarray(label.shape) - 1
    for axis in range(pts.shape[1]):
        for step in (-1, 1):
            nb = pts.copy()
            nb[:, axis] += step
            off = (nb[:, axis] < 0) | (nb[:, axis] > upper[axis])
            nb[off, axis] = pts[off, axis]  # any valid index; these are borders anyway
            border |= off | ~np.isin(label[tuple(nb.T)], labels)
    return pts[border]


def _sparse_border_distances(
    pred: np.ndarray,
    ref: np.ndarray,
    points: np.ndarray,
    pred_values: np.ndarray,
    ref_values: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`surface_distances` of one region from the coordinates of the non-zero voxels.

    Exact (the same borders, the same Euclidean distances through a k-d tree) at a cost set by
    the number of tumour voxels instead of the volume of the box around them.
    """
    scale = np.asarray(spacing, dtype=np.float64)
    border_p = _sparse_borders(pred, points, pred_values, labels) * scale
    border_r = _sparse_borders(ref, points, ref_values, labels) * scale
    to_ref = cKDTree(border_r).query(border_p)[0]
    to_pred = cKDTree(border_p).query(border_r)[0]
    return np.asarray(to_ref, dtype=np.float64), np.asarray(to_pred, dtype=np.float64)


def _region_hd95(
    pred: np.ndarray,
    ref: np.ndarray,
    either: tuple[np.ndarray, ...],
    pred_values: np.ndarray,
    ref_values: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
) -> float:
    """HD95 of one region of two non-empty label crops (``either``: their non-zero voxels)."""
    if either[0].size * _KDTREE_RATIO < pred.size:
        # Tumour voxels spread thin over a large box: work on their coordinates.
        to_ref, to_pred = _sparse_border_distances(
            pred, ref, np.stack(either, axis=1), pred_values, ref_values, labels, spacing
        )
        return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))
    return hd95(_labels_mask(pred, labels), _labels_mask(ref, labels), spacing)


def _labels_mask(label: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``label in labels`` by comparisons (no int64 copy of the volume)."""
    mask = label == labels[0]
    for value in labels[1:]:
        mask |= label == value
    return mask


def _confusion(
    pred_label: np.ndarray, ref_label: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Crops, their non-zero voxels and the 4 x 4 confusion counts of two internal label maps.

    Returns:
        ``(pred_crop, ref_crop, either, pred_values, ref_values, confusion)``: uint8 crops to the
        box of ``pred | ref`` grown by one voxel, the indices of the voxels where either is
        non-zero and the two maps' values there, and ``confusion[p, r]`` voxel counts over the
        crop (background outside it is not counted; callers derive true negatives from the
        grid size).

    Raises:
        ValueError: a label is outside 0-3.
    """
    # Every tumour voxel of either map lies in this box; outside it both maps are background.
    # uint8 OR is non-zero wherever either label is, in one cheap pass.
    box = bounding_box(
        np.bitwise_or(
            pred_label.astype(np.uint8, copy=False), ref_label.astype(np.uint8, copy=False)
        ),
        pad=1,
    )
    if box is None:
        pred_crop = np.zeros((1,) * pred_label.ndim, dtype=np.uint8)
        ref_crop = pred_crop
    else:
        pred_crop, ref_crop = pred_label[box], ref_label[box]
    for name, crop in (("prediction", pred_crop), ("reference", ref_crop)):
        if crop.size and (crop.min() < 0 or crop.max() >= NUM_CLASSES):
            raise ValueError(f"{name} label values must be internal labels 0-{NUM_CLASSES - 1}")
    pred_crop = pred_crop.astype(np.uint8, copy=False)
    ref_crop = ref_crop.astype(np.uint8, copy=False)
    # confusion[p, r] = number of voxels with prediction label p and reference label r. Only the
    # voxels where either map is non-zero are counted; the rest are (0, 0) by arithmetic.
    either = np.nonzero(pred_crop | ref_crop)
    pred_values, ref_values = pred_crop[either], ref_crop[either]
    codes = pred_values.astype(np.intp) * NUM_CLASSES + ref_values
    confusion = np.bincount(codes, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)
    confusion[0, 0] += pred_crop.size - codes.size
    return pred_crop, ref_crop, either, pred_values, ref_values, confusion


def case_metrics(
    pred_label: np.ndarray,
    ref_label: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    empty_hd95: float = BRATS_EMPTY_HD95,
) -> dict[str, float]:
    """The 12 BraTS metrics and the region volumes of one case.

    Args:
        pred_label: ``(X, Y, Z)`` integer label map in the internal convention (0-3).
        ref_label: ``(X, Y, Z)`` integer label map in the internal convention (0-3).
        spacing: voxel size in mm, used for HD95 and the volumes.
        empty_hd95: HD95 when exactly one mask of a region is empty.

    Returns:
        ``{name: value}`` with the keys of :data:`METRIC_NAMES` (``dice_wt, dice_tc, dice_et,
        hd95_wt, ..., spec_et``; HD95 in mm; NaN where sensitivity/specificity are undefined)
        followed by :data:`VOLUME_NAMES` (mL).

    Raises:
        ValueError: shapes differ or a label is outside 0-3.
    """
    pred_label = np.asarray(pred_label)
    ref_label = np.asarray(ref_label)
    if pred_label.shape != ref_label.shape:
        raise ValueError(f"shapes differ: {pred_label.shape} vs {ref_label.shape}")
    spacing = tuple(float(s) for s in spacing)
    n_total = int(pred_label.size)
    voxel_ml = float(np.prod(spacing)) / 1000.0

    pred_crop, ref_crop, either, pred_values, ref_values, confusion = _confusion(
        pred_label, ref_label
    )

    out: dict[str, float] = {}
    volumes: dict[str, float] = {}
    for region, labels in zip(REGIONS, REGION_LABELS):
        key = region.lower()
        inside = np.zeros(NUM_CLASSES, dtype=bool)
        inside[list(labels)] = True
        tp = int(confusion[np.ix_(inside, inside)].sum())
        fp = int(confusion[np.ix_(inside, ~inside)].sum())
        fn = int(confusion[np.ix_(~inside, inside)].sum())
        tn = n_total - tp - fp - fn  # arithmetic: no pass over the background
        out[f"dice_{key}"] = _dice_from_counts(tp, fp, fn)
        out[f"sens_{key}"] = _sensitivity_from_counts(tp, fn)
        out[f"spec_{key}"] = _specificity_from_counts(tn, fp)
        if tp + fp == 0 and tp + fn == 0:
            out[f"hd95_{key}"] = 0.0
        elif tp + fp == 0 or tp + fn == 0:
            out[f"hd95_{key}"] = float(empty_hd95)
        else:
            out[f"hd95_{key}"] = _region_hd95(
                pred_crop, ref_crop, either, pred_values, ref_values, labels, spacing
            )
        volumes[f"vol_{key}_pred_ml"] = (tp + fp) * voxel_ml
        volumes[f"vol_{key}_ref_ml"] = (tp + fn) * voxel_ml
    ordered = {name: out[name] for name in METRIC_NAMES}
    ordered.update({name: volumes[name] for name in VOLUME_NAMES})
    return ordered
