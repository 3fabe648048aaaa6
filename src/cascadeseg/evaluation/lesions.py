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

Speed: the union of every region's masks is labelled once per case, for every region and rule set
(:func:`lesion_matching_rule_sets`, :mod:`cascadeseg.evaluation.lesion_clusters`); its clusters
(grouped for brats2023 where a dilated lesion may reach across) hold every component, every
overlap and every dilated lesion, so each is scored on its own small box, grown by
``dilation + 1`` voxels so that erosions, distance transforms and dilations there equal the
full-grid ones. The cost follows the lesions, not the grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from cascadeseg.evaluation.lesion_clusters import (
    group_clusters,
    label_components,
    label_union,
    union_box,
)
from cascadeseg.evaluation.lesion_distances import _spacing3, pair_metrics_panoptica, surfel_hd95
from cascadeseg.evaluation.metrics import dice
from cascadeseg.evaluation.surface import bounding_box

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


def _component_records(
    labels: np.ndarray,
    n: int,
    source: str,
    spacing: tuple[float, float, float],
    offset: Sequence[int],
    affine: np.ndarray | None,
) -> list[dict]:
    """Voxel count and centroid of components ``1..n`` (``labels`` is a crop at ``offset``).

    Each component is measured inside its own bounding box (``find_objects``), so the cost is the
    sum of the lesions' boxes, not the size of the crop.
    """
    if n == 0:
        return []
    voxel_ml = float(np.prod(spacing)) / 1000.0
    a = None if affine is None else np.asarray(affine, dtype=np.float64)
    out = []
    for i, box in enumerate(ndimage.find_objects(labels, max_label=n)):
        if box is None:
            continue
        idx = np.nonzero(labels[box] == i + 1)
        count = int(idx[0].size)
        c = tuple(float(v.mean()) + s.start + o for v, s, o in zip(idx, box, offset))
        if a is not None:
            mm = tuple(float(v) for v in a[:3, :3] @ np.asarray(c) + a[:3, 3])
        else:
            mm = tuple(v * sp for v, sp in zip(c, spacing))
        out.append(
            {
                "id": i + 1,
                "source": source,
                "voxels": count,
                "volume_ml": count * voxel_ml,
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


# ----------------------------------------------------------------------------------- matching


def _pair_counts(a: np.ndarray, na: int, b: np.ndarray, nb: int) -> tuple[np.ndarray, ...]:
    """``(a_ids, b_ids, voxels)`` for every pair of labels that share at least one voxel."""
    both = (a > 0) & (b > 0)
    codes = a[both].astype(np.int64) * (nb + 1) + b[both]
    values, counts = np.unique(codes, return_counts=True)
    return values // (nb + 1), values % (nb + 1), counts


def _match_panoptica(
    ref_lab: np.ndarray, n_ref: int, pred_lab: np.ndarray, n_pred: int
) -> list[tuple[int, int]]:
    """panoptica's MaxBipartiteMatching on Dice: the matched ``(ref_id, pred_id)`` pairs."""
    if n_ref == 0 or n_pred == 0:
        return []
    ref_sizes = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    r, p, inter = _pair_counts(ref_lab, n_ref, pred_lab, n_pred)
    overlap = 2.0 * inter / (ref_sizes[r] + pred_sizes[p])
    cost = np.full((n_ref, n_pred), 1.0 + 1e-6)
    ok = overlap >= PANOPTICA_MATCH_THRESHOLD
    cost[r[ok] - 1, p[ok] - 1] = 1.0 - overlap[ok]
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(i) + 1, int(j) + 1) for i, j in zip(rows, cols) if cost[i, j] < 1.0]
    return pairs


@dataclass
class _Part:
    """Figures of one cluster of lesions (ids local to the cluster)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    scores: list[tuple[float, ...]] = field(default_factory=list)
    records: list[Lesion] = field(default_factory=list)


def _panoptica_part(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, float, float],
    offset: Sequence[int],
    affine: np.ndarray | None,
) -> _Part:
    """panoptica's rules on one cluster crop (masks padded by at least one voxel)."""
    ref_lab, n_ref = label_components(ref)
    pred_lab, n_pred = label_components(pred)
    pairs = _match_panoptica(ref_lab, n_ref, pred_lab, n_pred)
    ref_boxes, pred_boxes = ndimage.find_objects(ref_lab), ndimage.find_objects(pred_lab)
    scores: dict[tuple[int, int], tuple[float, float, float]] = {}
    for r_id, p_id in pairs:
        sub = union_box(ref_boxes[r_id - 1], pred_boxes[p_id - 1], shape=ref_lab.shape, pad=1)
        scores[(r_id, p_id)] = pair_metrics_panoptica(
            ref_lab[sub] == r_id, pred_lab[sub] == p_id, spacing
        )
    tp = len(pairs)
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
    return _Part(tp, n_pred - tp, n_ref - tp, list(scores.values()), records)


def _ids(*values: int | None) -> tuple[int, ...]:
    return tuple(int(v) for v in values if v)


def _brats2023_part(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, float, float],
    offset: Sequence[int],
    affine: np.ndarray | None,
    dilation: int,
    min_volume: float,
) -> _Part:
    """The BraTS 2023 rules on one cluster crop (padded by at least ``dilation + 1`` voxels)."""
    pred_lab, n_pred = label_components(pred)
    if ref.any():
        dil = ndimage.binary_dilation(ref, structure=_BALL18, iterations=dilation)
        dil_lab, n_les = label_components(dil)
    else:
        dil_lab, n_les = np.zeros(ref.shape, dtype=np.int32), 0
    les_lab = np.where(ref, dil_lab, 0).astype(np.int32)  # lesion = reference voxels of a group
    touching: dict[int, list[int]] = {g: [] for g in range(1, n_les + 1)}
    if n_les and n_pred:
        g_ids, p_ids, _ = _pair_counts(dil_lab, n_les, pred_lab, n_pred)
        for g, q in zip(g_ids.tolist(), p_ids.tolist()):
            touching[g].append(q)
    voxel_mm3 = float(np.prod(spacing))
    les_boxes, pred_boxes = ndimage.find_objects(les_lab), ndimage.find_objects(pred_lab)
    part = _Part()
    pred_status: dict[int, tuple[str, float, float, list[int]]] = {}
    for rec in _component_records(les_lab, n_les, "reference", spacing, offset, affine):
        g, preds = rec["id"], touching[rec["id"]]
        dice, hd = _lesion_scores_2023(les_lab, g, pred_lab, preds, les_boxes, pred_boxes, spacing)
        small = rec["voxels"] * voxel_mm3 <= min_volume
        if small:
            status = "below_threshold"
        else:
            status = "matched" if preds else "missed"
            part.tp, part.fn = part.tp + bool(preds), part.fn + (not preds)
            part.scores.append((dice, hd))
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
        part.records.append(Lesion(**rec, status=status, dice=dice, hd95=hd, partners=tuple(preds)))
    for rec in _component_records(pred_lab, n_pred, "prediction", spacing, offset, affine):
        st = pred_status.get(rec["id"])
        if st is None:
            part.fp += 1
            st = ("false_positive", 0.0, BRATS2023_FP_HD95, [])
        part.records.append(
            Lesion(**rec, status=st[0], dice=st[1], hd95=st[2], partners=tuple(sorted(st[3])))
        )
    return part


def _combine(rules: str, parts: Sequence[_Part]) -> LesionResult:
    """One region's result from its clusters: sums, means, lesion ids numbered across clusters."""
    tp, fp, fn = (sum(getattr(p, k) for p in parts) for k in ("tp", "fp", "fn"))
    scores = [s for p in parts for s in p.scores]
    f1 = recognition_f1(tp, fp, fn)
    if rules == "panoptica":
        if scores:
            dice, hd95, nsd = (float(v) for v in np.mean(np.array(scores), axis=0))
        elif fp + fn:  # panoptica's zero-TP edge cases (config_gli.yaml); INF reported as 373
            dice, hd95, nsd = 0.0, PANOPTICA_INF_HD95, 0.0
        else:  # no lesion on either side: panoptica's no_instances_result
            dice = hd95 = nsd = math.nan
    else:
        count = len(scores) + fp
        dice = sum(s[0] for s in scores) / count if count else 1.0
        hd95 = (sum(s[1] for s in scores) + BRATS2023_FP_HD95 * fp) / count if count else 0.0
        nsd = math.nan
    refs: list[Lesion] = []
    preds: list[Lesion] = []
    for part in parts:
        n_ref, n_pred = len(refs), len(preds)
        for les in part.records:
            mine, theirs = (n_ref, n_pred) if les.source == "reference" else (n_pred, n_ref)
            renumbered = replace(
                les, id=les.id + mine, partners=tuple(i + theirs for i in les.partners)
            )
            (refs if les.source == "reference" else preds).append(renumbered)
    return LesionResult(rules, tp, fp, fn, f1, dice, hd95, nsd, tuple(refs + preds))


@dataclass(frozen=True)
class _Setting:
    """What every cluster of a case is scored with."""

    spacing: tuple[float, float, float]
    affine: np.ndarray | None
    offset: Sequence[int]
    dilation: int
    min_volume: float


def _region_parts(
    rules: str,
    pred: np.ndarray,
    ref: np.ndarray,
    box: tuple[slice, ...] | None,
    labels: np.ndarray,
    groups: Sequence[tuple[list[int], tuple[slice, ...]]],
    setting: _Setting,
) -> list[_Part]:
    """One region's figures per group of clusters (groups without its voxels left out)."""
    parts: list[_Part] = []
    if box is None:  # every mask empty
        return parts
    p_box, r_box = pred[box], ref[box]
    for ids, sub in groups:
        inside = labels[sub] == ids[0] if len(ids) == 1 else np.isin(labels[sub], ids)
        p, r = p_box[sub] & inside, r_box[sub] & inside
        if not (p.any() or r.any()):
            continue
        at = [o + b.start + s.start for o, b, s in zip(setting.offset, box, sub)]
        if rules == "panoptica":
            parts.append(_panoptica_part(p, r, setting.spacing, at, setting.affine))
        else:
            parts.append(
                _brats2023_part(
                    p, r, setting.spacing, at, setting.affine, setting.dilation, setting.min_volume
                )
            )
    return parts


def lesion_matching_rule_sets(
    preds: Mapping[str, np.ndarray],
    refs: Mapping[str, np.ndarray],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    rule_sets: Sequence[str] = ("panoptica",),
    challenge: str = "GLI",
    affine: np.ndarray | None = None,
    dilation: int | None = None,
    min_volume: float | None = None,
    offset: Sequence[int] = (0, 0, 0),
) -> dict[str, dict[str, LesionResult]]:
    """:func:`lesion_matching` for several regions and rule sets of one case at once.

    The union of every mask is labelled once, for every region and rule set (faster than one
    by one; the results are the same).

    Args:
        preds: region name -> ``(X, Y, Z)`` binary prediction mask.
        refs: region name -> reference mask (same names, same shape).
        rule_sets: ``"panoptica"`` and/or ``"brats2023"``.
        offset: voxel position of the arrays' first voxel in the full grid (for centroids when
            the caller passes crops).
        spacing, challenge, affine, dilation, min_volume: see :func:`lesion_matching`.

    Returns:
        rule set -> region name -> :class:`LesionResult`.
    """
    names = list(preds)
    if set(names) != set(refs) or not names:
        raise ValueError("preds and refs need the same, non-empty set of regions")
    p_masks = [np.asarray(preds[n]).astype(bool, copy=False) for n in names]
    r_masks = [np.asarray(refs[n]).astype(bool, copy=False) for n in names]
    shape = p_masks[0].shape
    if len(shape) != 3 or any(m.shape != shape for m in (*p_masks, *r_masks)):
        raise ValueError(f"need 3D masks of one shape, got {[m.shape for m in p_masks + r_masks]}")
    unknown = [r for r in rule_sets if r not in RULES]
    if unknown:
        raise ValueError(f"unknown lesion rules {unknown[0]!r} (known: {', '.join(RULES)})")
    dil, thresh = challenge_parameters(challenge)
    dil = dil if dilation is None else int(dilation)
    thresh = thresh if min_volume is None else float(min_volume)
    setting = _Setting(_spacing3(spacing), affine, offset, dil, thresh)
    reach = {rules: dil if rules == "brats2023" else 0 for rules in rule_sets}
    box, labels = label_union(p_masks, r_masks, pad=max(reach.values(), default=0) + 1)
    results: dict[str, dict[str, LesionResult]] = {}
    for rules in rule_sets:
        groups = [] if box is None else group_clusters(labels, reach[rules])
        results[rules] = {
            name: _combine(rules, _region_parts(rules, p, r, box, labels, groups, setting))
            for name, p, r in zip(names, p_masks, r_masks)
        }
    return results


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
    sub = union_box(
        les_boxes[g - 1], *(pred_boxes[q - 1] for q in preds), shape=les_lab.shape, pad=1
    )
    gt = les_lab[sub] == g
    pr = np.isin(pred_lab[sub], preds)
    hd = surfel_hd95(gt, pr, spacing)
    return dice(pr, gt), (BRATS2023_FP_HD95 if math.isinf(hd) else hd)


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
    return lesion_matching_rule_sets(
        {"region": pred},
        {"region": ref},
        spacing,
        rule_sets=(rules,),
        challenge=challenge,
        affine=affine,
        dilation=dilation,
        min_volume=min_volume,
    )[rules]["region"]


def challenge_parameters(challenge: str) -> tuple[int, float]:
    """``(dilation iterations, size threshold in mm^3)`` of a BraTS 2023 challenge."""
    key = challenge.upper().removeprefix("BRATS-")
    if key not in CHALLENGES:
        raise ValueError(f"unknown challenge {challenge!r} (known: {', '.join(CHALLENGES)})")
    return CHALLENGES[key]
