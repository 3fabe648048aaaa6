"""Lesion-wise BraTS metrics (pure functions): connected components, matching, per-lesion records.

Two rule sets, each transcribed from the code that defines it (``docs/metrics.md`` shows both side
by side with a worked example):

``"panoptica"`` -- the current official package (PyPI ``BraTS-evaluation`` 0.0.10, command
``brats-evaluate``, config ``config_gli.yaml``; built on BrainLesion/panoptica 2.1):

* lesions are the 26-connected components of each region's binary mask, in the reference and in
  the prediction (panoptica's ``ConnectedComponentsInstanceApproximator`` with its default
  ``cc3d`` backend, connectivity 26);
* matching is ``MaxBipartiteMatching`` on Dice with threshold 1e-6: every overlapping
  (reference, prediction) pair with Dice >= 1e-6 costs ``1 - Dice``, every other pair
  ``1 + 1e-6``; ``scipy.optimize.linear_sum_assignment`` picks the one-to-one assignment and the
  pairs with cost < 1 are the true positives;
* ``tp`` = matched pairs, ``fp`` = prediction components - tp, ``fn`` = reference components - tp,
  ``f1`` = panoptica's recognition quality ``tp / (tp + fp/2 + fn/2)`` (0 when tp = 0 and there is
  any component; NaN when both masks are empty);
* lesion-wise Dice, HD95 and NSD (``sq_dsc``, ``sq_hd95``, ``sq_nsd``) are the means over the
  matched pairs only (false positives are not averaged in); HD95 pools both directions' border
  distances (6-connected erosion borders, ``numpy.percentile`` 95, like
  :func:`cascadeseg.evaluation.metrics.hd95`); NSD is panoptica's (GaNDLF's) variant: the mean of
  the two fractions of border voxels within ``min(spacing)`` of the other border;
* no true positive: Dice 0 and NSD 0 when either mask has a component, HD95 infinite (reported as
  :data:`PANOPTICA_INF_HD95` = 373, the value the BraTS parser uses for infinite HD95), all three
  NaN when both masks are empty (panoptica's ``no_instances_result``).

``"brats2023"`` -- the BraTS 2023 ranking code (rachitsaluja/BraTS-2023-Metrics,
``brats_metrics.py``: ``get_lesion_wise_score`` and ``get_lesion_wise_results``):

* 26-connected components; the reference mask is dilated (18-neighbourhood structuring element,
  ``dilation`` iterations: 3 for GLI/SSA/PED, 1 for MEN/MET), and reference components that fall in
  one component of the dilated mask form one lesion;
* every predicted component touching a lesion's dilated mask counts for that lesion (one predicted
  component may count for several lesions); the lesion's Dice and HD95 are taken against the union
  of those whole components; a lesion with none scores Dice 0 and HD95 374;
* reference lesions of volume ``<= size threshold`` (mm^3: 50 for GLI/SSA/MEN/PED, 2 for MET; voxels
  at 1 mm) are dropped from tp, fn and the means (predicted components touching them are not false
  positives either);
* predicted components touching no lesion's dilated mask are false positives, not size-filtered;
* lesion-wise Dice = sum of kept lesions' Dice / (kept lesions + false positives); lesion-wise HD95
  = (sum of kept lesions' HD95 + 374 x false positives) / the same count; no kept lesion and no
  false positive: Dice 1, HD95 0;
* HD95 is DeepMind's surface-distance ``compute_robust_hausdorff(..., 95)``: surface elements on
  the 2x2x2 neighbour-code grid weighted by their area, the 95th percentile taken per direction,
  the larger of the two;
* ``f1`` (the 2023 code reports none) is computed with the panoptica formula from its tp/fp/fn.

Speed: both masks are cropped to the box of ``pred | dilated ref`` first; components are labelled
once per mask (:func:`scipy.ndimage.label`, 26-connectivity); overlaps are counted with one
``numpy.unique`` over the voxels where both masks are set; distances are computed per lesion on the
lesion's own box (see :func:`cascadeseg.evaluation.metrics.bounding_box` for why a one-voxel pad
keeps erosions and distance transforms exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from cascadeseg.evaluation.metrics import bounding_box

Rules = Literal["panoptica", "brats2023"]
RULES: tuple[str, ...] = ("panoptica", "brats2023")
#: Dice threshold of the official package's ``MaxBipartiteMatching`` (``config_gli.yaml``).
PANOPTICA_MATCH_THRESHOLD: float = 1e-6
#: HD95 reported for panoptica's infinite HD95 (the BraTS parser's penalty, "diameter of the cube").
PANOPTICA_INF_HD95: float = 373.0
#: HD95 of a missed lesion and of every false positive in the BraTS 2023 ranking code.
BRATS2023_FP_HD95: float = 374.0
#: Challenge -> (dilation iterations, lesion size threshold in mm^3) of the BraTS 2023 code.
CHALLENGES: dict[str, tuple[int, float]] = {
    "GLI": (3, 50.0),
    "SSA": (3, 50.0),
    "PED": (3, 50.0),
    "MEN": (1, 50.0),
    "MET": (1, 2.0),
}

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
_CROSS = ndimage.generate_binary_structure(3, 1)  # 6-connected erosion for borders
_BALL18 = ndimage.generate_binary_structure(3, 2)  # the 2023 code's dilation element

LesionStatus = Literal["matched", "missed", "false_positive", "below_threshold", "near_small"]


@dataclass(frozen=True)
class Lesion:
    """One connected component of one region, in the reference or in the prediction.

    Attributes:
        id: 1-based number within its side (``source``), in scan order of the labelling.
        source: ``"reference"`` or ``"prediction"``.
        voxels: number of voxels.
        volume_ml: volume in mL (voxels x voxel volume).
        centroid_voxel: centre of mass in voxel indices ``(i, j, k)`` of the full array.
        centroid_mm: centre of mass in mm: ``affine @ (i, j, k, 1)`` when an affine was given,
            else ``index x spacing``.
        status: ``matched`` (a true positive), ``missed`` (a reference lesion without partner),
            ``false_positive`` (a predicted component without partner), ``below_threshold``
            (brats2023: a reference lesion at or under the size threshold, left out of every
            figure) or ``near_small`` (brats2023: a predicted component that touches only such
            lesions: neither true nor false positive).
        dice: the lesion's Dice with its partner(s) (0 for missed lesions and false positives).
        hd95: the lesion's HD95 in mm (missed / false positive: the rule set's penalty).
        partners: ids of the components on the other side it was scored against.
    """

    id: int
    source: str
    voxels: int
    volume_ml: float
    centroid_voxel: tuple[float, float, float]
    centroid_mm: tuple[float, float, float]
    status: str
    dice: float
    hd95: float
    partners: tuple[int, ...] = ()


@dataclass(frozen=True)
class LesionResult:
    """Lesion-wise figures of one region of one case under one rule set.

    Attributes:
        rules: ``"panoptica"`` or ``"brats2023"``.
        tp, fp, fn: true-positive, false-positive and false-negative lesion counts.
        f1: ``tp / (tp + (fp + fn) / 2)``; 0 when tp = 0 with any lesion; NaN when none at all.
        dice: lesion-wise Dice (panoptica ``sq_dsc``; brats2023 "LesionWise_Score_Dice").
        hd95: lesion-wise HD95 in mm (panoptica ``sq_hd95``; brats2023 "LesionWise_Score_HD95").
        nsd: lesion-wise NSD at ``min(spacing)`` (panoptica ``sq_nsd``); NaN for brats2023.
        lesions: per-lesion records, reference lesions first, then predicted components.
    """

    rules: str
    tp: int
    fp: int
    fn: int
    f1: float
    dice: float
    hd95: float
    nsd: float
    lesions: tuple[Lesion, ...] = field(default=())


def recognition_f1(tp: int, fp: int, fn: int) -> float:
    """panoptica's recognition quality ``tp / (tp + fp/2 + fn/2)`` with its empty conventions."""
    if tp == 0:
        return 0.0 if fp + fn > 0 else math.nan
    return tp / (tp + 0.5 * fp + 0.5 * fn)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a binary 3D mask: ``(int32 labels, count)``."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=_FULL)
    return labels.astype(np.int32, copy=False), int(n)


def _union_box(
    *boxes: tuple[slice, ...] | None, shape: Sequence[int], pad: int
) -> tuple[slice, ...]:
    lo = [min(b[d].start for b in boxes if b is not None) for d in range(len(shape))]
    hi = [max(b[d].stop for b in boxes if b is not None) for d in range(len(shape))]
    return tuple(slice(max(a - pad, 0), min(b + pad, n)) for a, b, n in zip(lo, hi, shape))


def _shift(box: tuple[slice, ...], offset: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, offset))


def _component_records(
    labels: np.ndarray,
    n: int,
    source: str,
    spacing: tuple[float, float, float],
    offset: Sequence[int],
    affine: np.ndarray | None,
) -> list[dict]:
    """Voxel count and centroid of components ``1..n`` (``labels`` is a crop at ``offset``)."""
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    centres = ndimage.center_of_mass(np.ones(labels.shape, dtype=np.uint8), labels, index)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = []
    for i in range(n):
        c = tuple(float(v) + o for v, o in zip(centres[i], offset))
        if affine is not None:
            mm = tuple(
                float(v) for v in (np.asarray(affine)[:3, :3] @ c + np.asarray(affine)[:3, 3])
            )
        else:
            mm = tuple(v * s for v, s in zip(c, spacing))
        out.append(
            {
                "id": i + 1,
                "source": source,
                "voxels": int(counts[i]),
                "volume_ml": int(counts[i]) * voxel_ml,
                "centroid_voxel": c,
                "centroid_mm": mm,
            }
        )
    return out


def connected_lesions(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    affine: np.ndarray | None = None,
) -> list[Lesion]:
    """The 26-connected components of one binary mask as :class:`Lesion` records.

    For reports on a prediction alone (lesion counts and volumes per region); ``status`` is
    ``"unscored"``, ``dice`` and ``hd95`` NaN.

    Args:
        mask: ``(X, Y, Z)`` binary mask.
        spacing: voxel size in mm.
        affine: optional 4x4 voxel-to-world matrix for ``centroid_mm``.
    """
    spacing3 = _spacing3(spacing)
    mask = np.asarray(mask, dtype=bool)
    box = bounding_box(mask, pad=0)
    if box is None:
        return []
    labels, n = label_components(mask[box])
    records = _component_records(labels, n, "prediction", spacing3, [s.start for s in box], affine)
    return [Lesion(**r, status="unscored", dice=math.nan, hd95=math.nan) for r in records]


def _spacing3(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"spacing must be 3 positive numbers, got {spacing}")
    return values[0], values[1], values[2]


# --------------------------------------------------------------------------- distances (panoptica)


def _border_distances(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Border-to-border distances of two non-empty masks on a shared padded crop (medpy style)."""
    border_a = a ^ ndimage.binary_erosion(a, structure=_CROSS)
    border_b = b ^ ndimage.binary_erosion(b, structure=_CROSS)
    a_to_b = ndimage.distance_transform_edt(~border_b, sampling=spacing)[border_a]
    b_to_a = ndimage.distance_transform_edt(~border_a, sampling=spacing)[border_b]
    return np.asarray(a_to_b, dtype=np.float64), np.asarray(b_to_a, dtype=np.float64)


def _pair_metrics_panoptica(
    ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[float, float, float]:
    """``(dice, hd95, nsd)`` of two non-empty masks cropped with a one-voxel pad."""
    inter = int(np.count_nonzero(ref & pred))
    dice = 2.0 * inter / (int(np.count_nonzero(ref)) + int(np.count_nonzero(pred)))
    ref_to_pred, pred_to_ref = _border_distances(ref, pred, spacing)
    hd95 = float(np.percentile(np.concatenate([ref_to_pred, pred_to_ref]), 95))
    tol = min(spacing)
    # panoptica's _nsd_from_pair: (tp_a + tp_b) / (tp_a + tp_b + fp + fn) with fractions per
    # surface, i.e. the mean of the two within-tolerance fractions.
    frac_a = np.count_nonzero(pred_to_ref <= tol) / pred_to_ref.size
    frac_b = np.count_nonzero(ref_to_pred <= tol) / ref_to_pred.size
    nsd = float((frac_a + frac_b) / (frac_a + frac_b + (1 - frac_a) + (1 - frac_b)))
    return dice, hd95, nsd


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


# ----------------------------------------------------------------------------------- matching


def _pair_counts(a: np.ndarray, na: int, b: np.ndarray, nb: int) -> tuple[np.ndarray, ...]:
    """``(a_ids, b_ids, voxels)`` for every pair of labels that share at least one voxel."""
    both = (a > 0) & (b > 0)
    codes = a[both].astype(np.int64) * (nb + 1) + b[both]
    values, counts = np.unique(codes, return_counts=True)
    return values // (nb + 1), values % (nb + 1), counts


def _match_panoptica(
    ref_lab: np.ndarray, n_ref: int, pred_lab: np.ndarray, n_pred: int
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """panoptica's MaxBipartiteMatching on Dice.

    Returns:
        ``([(ref_id, pred_id), ...], ref_sizes, pred_sizes)`` (sizes indexed by label).
    """
    ref_sizes = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    if n_ref == 0 or n_pred == 0:
        return [], ref_sizes, pred_sizes
    r, p, inter = _pair_counts(ref_lab, n_ref, pred_lab, n_pred)
    dice = 2.0 * inter / (ref_sizes[r] + pred_sizes[p])
    cost = np.full((n_ref, n_pred), 1.0 + 1e-6)
    ok = dice >= PANOPTICA_MATCH_THRESHOLD
    cost[r[ok] - 1, p[ok] - 1] = 1.0 - dice[ok]
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(i) + 1, int(j) + 1) for i, j in zip(rows, cols) if cost[i, j] < 1.0]
    return pairs, ref_sizes, pred_sizes


def _work_box(pred: np.ndarray, ref: np.ndarray, pad: int) -> tuple[slice, ...] | None:
    boxes = [bounding_box(pred, pad=0), bounding_box(ref, pad=0)]
    if boxes[0] is None and boxes[1] is None:
        return None
    return _union_box(*boxes, shape=pred.shape, pad=pad)


def _panoptica(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, float, float],
    affine: np.ndarray | None,
) -> LesionResult:
    box = _work_box(pred, ref, pad=1)
    if box is None:
        return LesionResult("panoptica", 0, 0, 0, math.nan, math.nan, math.nan, math.nan)
    offset = [s.start for s in box]
    ref_lab, n_ref = label_components(ref[box])
    pred_lab, n_pred = label_components(pred[box])
    pairs, _, _ = _match_panoptica(ref_lab, n_ref, pred_lab, n_pred)
    ref_boxes, pred_boxes = ndimage.find_objects(ref_lab), ndimage.find_objects(pred_lab)
    scores: dict[tuple[int, int], tuple[float, float, float]] = {}
    for r_id, p_id in pairs:
        sub = _union_box(ref_boxes[r_id - 1], pred_boxes[p_id - 1], shape=ref_lab.shape, pad=1)
        scores[(r_id, p_id)] = _pair_metrics_panoptica(
            ref_lab[sub] == r_id, pred_lab[sub] == p_id, spacing
        )
    tp = len(pairs)
    fp, fn = n_pred - tp, n_ref - tp
    if tp:
        values = np.array(list(scores.values()))
        dice, hd95, nsd = (float(v) for v in values.mean(axis=0))
    else:  # panoptica's zero-TP edge cases (config_gli.yaml); INF is reported as 373
        dice, nsd, hd95 = 0.0, 0.0, PANOPTICA_INF_HD95
    ref_partner = {r: p for r, p in pairs}
    pred_partner = {p: r for r, p in pairs}
    records: list[Lesion] = []
    for rec in _component_records(ref_lab, n_ref, "reference", spacing, offset, affine):
        partner = ref_partner.get(rec["id"])
        d, h, _ = scores[(rec["id"], partner)] if partner else (0.0, math.nan, 0.0)
        status = "matched" if partner else "missed"
        records.append(Lesion(**rec, status=status, dice=d, hd95=h, partners=_ids(partner)))
    for rec in _component_records(pred_lab, n_pred, "prediction", spacing, offset, affine):
        partner = pred_partner.get(rec["id"])
        d, h, _ = scores[(partner, rec["id"])] if partner else (0.0, math.nan, 0.0)
        status = "matched" if partner else "false_positive"
        records.append(Lesion(**rec, status=status, dice=d, hd95=h, partners=_ids(partner)))
    return LesionResult(
        "panoptica", tp, fp, fn, recognition_f1(tp, fp, fn), dice, hd95, nsd, tuple(records)
    )


def _ids(*values: int | None) -> tuple[int, ...]:
    return tuple(int(v) for v in values if v)


def _brats2023(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, float, float],
    affine: np.ndarray | None,
    dilation: int,
    min_volume: float,
) -> LesionResult:
    box = _work_box(pred, ref, pad=dilation + 1)
    if box is None:
        return LesionResult("brats2023", 0, 0, 0, math.nan, 1.0, 0.0, math.nan)
    offset = [s.start for s in box]
    p, r = pred[box], ref[box]
    pred_lab, n_pred = label_components(p)
    if r.any():
        dil = ndimage.binary_dilation(r, structure=_BALL18, iterations=dilation)
        dil_lab, n_les = label_components(dil)
    else:
        dil_lab, n_les = np.zeros(r.shape, dtype=np.int32), 0
    les_lab = np.where(r, dil_lab, 0).astype(np.int32)  # lesion = reference voxels of one group
    touching: dict[int, list[int]] = {g: [] for g in range(1, n_les + 1)}
    if n_les and n_pred:
        g_ids, p_ids, _ = _pair_counts(dil_lab, n_les, pred_lab, n_pred)
        for g, q in zip(g_ids.tolist(), p_ids.tolist()):
            touching[g].append(q)
    voxel_mm3 = float(np.prod(spacing))
    les_boxes, pred_boxes = ndimage.find_objects(les_lab), ndimage.find_objects(pred_lab)
    les_records = _component_records(les_lab, n_les, "reference", spacing, offset, affine)
    kept_dice: list[float] = []
    kept_hd: list[float] = []
    pred_status: dict[int, tuple[str, float, float, list[int]]] = {}
    records: list[Lesion] = []
    tp = fn = 0
    for rec in les_records:
        g, preds = rec["id"], touching[rec["id"]]
        dice, hd = _lesion_scores_2023(les_lab, g, pred_lab, preds, les_boxes, pred_boxes, spacing)
        small = rec["voxels"] * voxel_mm3 <= min_volume
        if small:
            status = "below_threshold"
        else:
            status = "matched" if preds else "missed"
            tp, fn = tp + bool(preds), fn + (not preds)
            kept_dice.append(dice)
            kept_hd.append(hd)
        for q in preds:
            old = pred_status.get(q)
            label = "near_small" if small else "matched"
            if (
                old is None
                or (old[0] == "near_small" and label == "matched")
                or (old[0] == label and dice > old[1])
            ):
                pred_status[q] = (label, dice, hd, (old[3] if old else []) + [g])
            else:
                old[3].append(g)
        records.append(Lesion(**rec, status=status, dice=dice, hd95=hd, partners=tuple(preds)))
    fp = 0
    for rec in _component_records(pred_lab, n_pred, "prediction", spacing, offset, affine):
        st = pred_status.get(rec["id"])
        if st is None:
            fp += 1
            st = ("false_positive", 0.0, BRATS2023_FP_HD95, [])
        records.append(
            Lesion(**rec, status=st[0], dice=st[1], hd95=st[2], partners=tuple(sorted(st[3])))
        )
    count = len(kept_dice) + fp
    lw_dice = sum(kept_dice) / count if count else 1.0
    lw_hd95 = (sum(kept_hd) + BRATS2023_FP_HD95 * fp) / count if count else 0.0
    f1 = recognition_f1(tp, fp, fn)
    return LesionResult("brats2023", tp, fp, fn, f1, lw_dice, lw_hd95, math.nan, tuple(records))


def _lesion_scores_2023(
    les_lab: np.ndarray,
    g: int,
    pred_lab: np.ndarray,
    preds: list[int],
    les_boxes: list,
    pred_boxes: list,
    spacing: tuple[float, float, float],
) -> tuple[float, float]:
    """Dice and HD95 of lesion ``g`` against the union of the whole components ``preds``."""
    if not preds:
        return 0.0, BRATS2023_FP_HD95
    sub = _union_box(
        les_boxes[g - 1], *(pred_boxes[q - 1] for q in preds), shape=les_lab.shape, pad=1
    )
    gt = les_lab[sub] == g
    pr = np.isin(pred_lab[sub], preds)
    dice = 2.0 * np.count_nonzero(gt & pr) / (np.count_nonzero(gt) + np.count_nonzero(pr))
    hd = surfel_hd95(gt, pr, spacing)
    return float(dice), (BRATS2023_FP_HD95 if math.isinf(hd) else hd)


def lesion_matching(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    rules: str = "panoptica",
    challenge: str = "GLI",
    affine: np.ndarray | None = None,
    dilation: int | None = None,
    min_volume: float | None = None,
) -> LesionResult:
    """Lesion-wise figures of one region: lesions, matching, tp/fp/fn, F1, Dice, HD95, NSD.

    Args:
        pred: ``(X, Y, Z)`` binary mask of the region in the prediction.
        ref: ``(X, Y, Z)`` binary mask of the region in the reference.
        spacing: voxel size in mm (distances, volumes and the brats2023 size threshold use it).
        rules: ``"panoptica"`` (the current official package) or ``"brats2023"`` (the BraTS 2023
            ranking code); see the module docstring.
        challenge: brats2023 only: ``GLI``, ``SSA``, ``PED``, ``MEN`` or ``MET`` (a ``BraTS-``
            prefix is accepted); picks the dilation and the size threshold of :data:`CHALLENGES`.
        affine: optional 4x4 voxel-to-world matrix for the lesions' ``centroid_mm``.
        dilation: brats2023 only: overrides the challenge's dilation iterations.
        min_volume: brats2023 only: overrides the challenge's size threshold (mm^3; lesions at or
            under it are dropped).

    Returns:
        A :class:`LesionResult` with per-lesion records.

    Raises:
        ValueError: shapes differ, the arrays are not 3D, or an unknown rule set / challenge.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    ref = np.asarray(ref).astype(bool, copy=False)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"need two 3D masks of one shape, got {pred.shape} and {ref.shape}")
    spacing3 = _spacing3(spacing)
    if rules == "panoptica":
        return _panoptica(pred, ref, spacing3, affine)
    if rules != "brats2023":
        raise ValueError(f"unknown lesion rules {rules!r} (known: {', '.join(RULES)})")
    dil, thresh = challenge_parameters(challenge)
    return _brats2023(
        pred,
        ref,
        spacing3,
        affine,
        dil if dilation is None else int(dilation),
        thresh if min_volume is None else float(min_volume),
    )


def challenge_parameters(challenge: str) -> tuple[int, float]:
    """``(dilation iterations, size threshold in mm^3)`` of a BraTS 2023 challenge."""
    key = challenge.upper().removeprefix("BRATS-")
    if key not in CHALLENGES:
        raise ValueError(f"unknown challenge {challenge!r} (known: {', '.join(CHALLENGES)})")
    return CHALLENGES[key]
