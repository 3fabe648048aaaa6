"""BraTS segmentation metrics: Dice, sensitivity, specificity and HD95, and the list of metrics.

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

Per case, :func:`case_metrics` computes every metric of the list :data:`METRICS` for every region
(WT, TC, ET): a :class:`MetricSpec` names a metric's columns, says how the report and plots show
it and computes it from a :class:`CaseRegion` (confusion counts, or masks). The BraTS four come
first (:data:`BRATS_METRICS`, the 12 columns :data:`METRIC_NAMES`); :func:`register_metric` adds
more (``tests/evaluation/test_metric_extension.py`` adds one from a test file alone).

Speed: :func:`case_metrics` crops to the bounding box of ``pred | ref`` (plus one voxel, so
erosions and distance transforms on the crop equal those on the full grid), counts all confusions
of the 4 x 4 internal labels with one ``numpy.bincount``, derives the true negatives
arithmetically from the full volume's size, and measures border distances
(:mod:`cascadeseg.evaluation.surface`) only for regions where both masks are non-empty.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cascadeseg.data.labels import NUM_CLASSES, REGION_LABELS, REGIONS
from cascadeseg.evaluation.surface import (
    bounding_box,
    labels_mask,
    region_border_distances,
    surface_distances,
)

#: HD95 when exactly one of the masks is empty: the diagonal of the 240 x 240 x 155 BraTS grid in
#: mm (``sqrt(240**2 + 240**2 + 155**2) = 373.12866...``), the value of the BraTS 2017-2021 code.
BRATS_EMPTY_HD95: float = math.sqrt(240**2 + 240**2 + 155**2)

#: Volumes in mL reported after the metrics, prediction then reference per region.
VOLUME_NAMES: tuple[str, ...] = tuple(
    f"vol_{region.lower()}_{side}_ml" for region in REGIONS for side in ("pred", "ref")
)


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


@dataclass(frozen=True)
class _Crops:
    """Two internal label maps cropped to the box of their tumours, grown by one voxel.

    Attributes:
        pred, ref: ``uint8`` crops (outside the box both maps are background).
        either: indices of the crop's voxels where either map is non-zero.
        pred_values, ref_values: the two maps' labels at ``either``.
    """

    pred: np.ndarray
    ref: np.ndarray
    either: tuple[np.ndarray, ...]
    pred_values: np.ndarray
    ref_values: np.ndarray


def _confusion(pred_label: np.ndarray, ref_label: np.ndarray) -> tuple[_Crops, np.ndarray]:
    """The crops of two internal label maps and their 4 x 4 confusion counts.

    Returns:
        ``(crops, confusion)``: ``confusion[p, r]`` is the number of voxels of the whole grid
        with prediction label ``p`` and reference label ``r`` (the background outside the box
        is added to ``[0, 0]`` arithmetically).

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
    # Only the voxels where either map is non-zero are counted; the rest are (0, 0).
    either = np.nonzero(pred_crop | ref_crop)
    pred_values, ref_values = pred_crop[either], ref_crop[either]
    codes = pred_values.astype(np.intp) * NUM_CLASSES + ref_values
    confusion = np.bincount(codes, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)
    confusion[0, 0] += pred_label.size - codes.size
    return _Crops(pred_crop, ref_crop, either, pred_values, ref_values), confusion


@dataclass(frozen=True)
class CaseRegion:
    """One tumour region of one case: what a metric's function reads.

    Attributes:
        name: ``"WT"``, ``"TC"`` or ``"ET"``.
        labels: the internal labels that make up the region.
        tp, fp, fn, tn: voxel counts over the whole grid (prediction vs reference).
        spacing: voxel size in mm.
        empty_hd95: HD95 in mm when exactly one of the two masks is empty.
        crops: the case's label maps around their tumours (:meth:`masks` reads them).
    """

    name: str
    labels: tuple[int, ...]
    tp: int
    fp: int
    fn: int
    tn: int
    spacing: tuple[float, ...]
    empty_hd95: float
    crops: _Crops

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in mL."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def pred_voxels(self) -> int:
        return self.tp + self.fp

    @property
    def ref_voxels(self) -> int:
        return self.tp + self.fn

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pred, ref)`` bool masks of the region on the box of both maps' tumours.

        The box is grown by one voxel, so borders and surface distances equal the full grid's;
        background counts do not (use :attr:`tn`). Built on each call.
        """
        return labels_mask(self.crops.pred, self.labels), labels_mask(self.crops.ref, self.labels)


def from_masks(
    function: Callable[[np.ndarray, np.ndarray, tuple[float, ...]], float],
) -> Callable[[CaseRegion], float]:
    """A :attr:`MetricSpec.compute` from a function of ``(pred mask, ref mask, spacing in mm)``."""

    def compute(region: CaseRegion) -> float:
        pred, ref = region.masks()
        return function(pred, ref, region.spacing)

    return compute


def _region_hd95_value(region: CaseRegion) -> float:
    """HD95 of a region in mm: 0 when both masks are empty, ``empty_hd95`` when one is."""
    if region.pred_voxels == 0 and region.ref_voxels == 0:
        return 0.0
    if region.pred_voxels == 0 or region.ref_voxels == 0:
        return float(region.empty_hd95)
    c = region.crops
    to_ref, to_pred = region_border_distances(
        c.pred, c.ref, c.either, c.pred_values, c.ref_values, region.labels, region.spacing
    )
    return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))


@dataclass(frozen=True)
class MetricSpec:
    """One per-region metric of ``metrics.csv``: how it is computed, named, shown and judged.

    Attributes:
        name: the key, lowercase letters and digits (``dice``); its columns are
            ``<name>_<region>`` (``dice_wt``, ``dice_tc``, ``dice_et``).
        label: the name for people (plot axes: ``Dice score``).
        short: the column head of the method tables (``Dice``).
        unit: ``""`` for fractions, else the unit of the values (``mm``).
        direction: ``"higher"`` or ``"lower"`` is better.
        compute: the value of one :class:`CaseRegion` (see :func:`from_masks`); NaN where
            undefined (left out of the statistics and counted).
        digits: decimals in the report's method and per-case tables.
        summary_digits: decimals in the summary tables (report and console).
        bounds: the range of the values, for plot axes (``None``: from the data).
        table_rank: position among the method tables' metrics (CU-Net Table 1: Dice, Sens, Spec,
            then HD95); equal ranks keep the list's order.
        in_report: a row of the report's summary table and columns of the method tables
            (``report.html``, ``table.csv``, ``table.md``).
        in_cases_table: columns of the report's per-case table.
        plot: the box-plot figure that draws it, one panel per metric (``"boxplots"`` is
            ``boxplots.png``); ``""``: none.
    """

    name: str
    label: str
    short: str
    unit: str
    direction: Literal["higher", "lower"]
    compute: Callable[[CaseRegion], float]
    digits: int = 3
    summary_digits: int = 4
    bounds: tuple[float, float] | None = None
    table_rank: int = 99
    in_report: bool = True
    in_cases_table: bool = False
    plot: str = ""

    def column(self, region: str) -> str:
        """The column of one region (``"WT"`` -> ``dice_wt``)."""
        return f"{self.name}_{region.lower()}"

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of every region, in the order of :data:`REGIONS`."""
        return tuple(self.column(region) for region in REGIONS)

    @property
    def axis_label(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


_FRACTION = (0.0, 1.0)
#: The four BraTS metrics in the column order of ``metrics.csv`` (the order the issue fixes).
BRATS_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        name="dice",
        label="Dice score",
        short="Dice",
        unit="",
        direction="higher",
        compute=lambda r: _dice_from_counts(r.tp, r.fp, r.fn),
        bounds=_FRACTION,
        table_rank=0,
        in_cases_table=True,
        plot="boxplots",
    ),
    MetricSpec(
        name="hd95",
        label="HD95",
        short="HD95",
        unit="mm",
        direction="lower",
        compute=_region_hd95_value,
        digits=2,
        summary_digits=2,
        table_rank=3,
        in_cases_table=True,
        plot="hd95_boxplots",
    ),
    MetricSpec(
        name="sens",
        label="Sensitivity",
        short="Sens",
        unit="",
        direction="higher",
        compute=lambda r: _sensitivity_from_counts(r.tp, r.fn),
        bounds=_FRACTION,
        table_rank=1,
        plot="boxplots",
    ),
    MetricSpec(
        name="spec",
        label="Specificity",
        short="Spec",
        unit="",
        direction="higher",
        compute=lambda r: _specificity_from_counts(r.tn, r.fp),
        bounds=_FRACTION,
        table_rank=2,
    ),
)
#: Every metric of ``metrics.csv``, in column order: the BraTS four, then registered ones
#: (:func:`register_metric`). Evaluation, summary, report and plots read this list.
METRICS: list[MetricSpec] = list(BRATS_METRICS)
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")


def metric_columns(specs: Sequence[MetricSpec] | None = None) -> tuple[str, ...]:
    """The columns of ``specs`` (default: :data:`METRICS`), metric by metric, region by region."""
    return tuple(col for spec in (METRICS if specs is None else specs) for col in spec.columns)


#: The 12 BraTS columns (``dice_wt`` ... ``spec_et``): in every ``metrics.csv``, in this order.
METRIC_NAMES: tuple[str, ...] = metric_columns(BRATS_METRICS)


def metric_spec(name: str) -> MetricSpec:
    """The registered metric called ``name``.

    Raises:
        ValueError: no metric has that name.
    """
    for spec in METRICS:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown metric {name!r} (known: {', '.join(s.name for s in METRICS)})")


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add a metric after the registered ones: ``evaluate`` computes it for every region and case.

    Its columns follow the other metrics' in ``metrics.csv`` (before the volumes), its statistics
    go to ``summary.json``'s ``metrics`` and the report shows it as ``spec`` says. Register at
    import time of a module: ``evaluate``'s worker processes are forked and inherit the list.

    Raises:
        ValueError: the name is not lowercase letters and digits, or is taken.
    """
    if not _NAME_RE.match(spec.name):
        raise ValueError(f"metric name {spec.name!r}: use lowercase letters and digits only")
    if any(s.name == spec.name for s in METRICS):
        raise ValueError(f"metric {spec.name!r} is already registered")
    METRICS.append(spec)
    return spec


def unregister_metric(name: str) -> MetricSpec:
    """Remove a metric added by :func:`register_metric` (the BraTS four stay).

    Raises:
        ValueError: ``name`` is a BraTS metric or not registered.
    """
    if any(s.name == name for s in BRATS_METRICS):
        raise ValueError(f"metric {name!r} is one of the BraTS metrics, which every run has")
    spec = metric_spec(name)
    METRICS.remove(spec)
    return spec


def case_metrics(
    pred_label: np.ndarray,
    ref_label: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    empty_hd95: float = BRATS_EMPTY_HD95,
) -> dict[str, float]:
    """Every registered metric (:data:`METRICS`) and the region volumes of one case.

    Args:
        pred_label: ``(X, Y, Z)`` integer label map in the internal convention (0-3).
        ref_label: ``(X, Y, Z)`` integer label map in the internal convention (0-3).
        spacing: voxel size in mm, used for HD95 and the volumes.
        empty_hd95: HD95 when exactly one mask of a region is empty.

    Returns:
        ``{column: value}`` in the order of :func:`metric_columns` (``dice_wt, dice_tc, dice_et,
        hd95_wt, ..., spec_et``, then registered metrics; HD95 in mm; NaN where
        sensitivity/specificity are undefined), followed by :data:`VOLUME_NAMES` (mL).

    Raises:
        ValueError: shapes differ or a label is outside 0-3.
    """
    pred_label = np.asarray(pred_label)
    ref_label = np.asarray(ref_label)
    if pred_label.shape != ref_label.shape:
        raise ValueError(f"shapes differ: {pred_label.shape} vs {ref_label.shape}")
    sp = tuple(float(s) for s in spacing)
    crops, confusion = _confusion(pred_label, ref_label)
    values: dict[str, float] = {}
    volumes: dict[str, float] = {}
    for name, labels in zip(REGIONS, REGION_LABELS):
        inside = np.zeros(NUM_CLASSES, dtype=bool)
        inside[list(labels)] = True
        tp = int(confusion[np.ix_(inside, inside)].sum())
        fp = int(confusion[np.ix_(inside, ~inside)].sum())
        fn = int(confusion[np.ix_(~inside, inside)].sum())
        tn = int(pred_label.size) - tp - fp - fn  # arithmetic: no pass over the background
        region = CaseRegion(name, tuple(labels), tp, fp, fn, tn, sp, float(empty_hd95), crops)
        for spec in METRICS:
            values[spec.column(name)] = float(spec.compute(region))
        volumes[f"vol_{name.lower()}_pred_ml"] = region.pred_voxels * region.voxel_ml
        volumes[f"vol_{name.lower()}_ref_ml"] = region.ref_voxels * region.voxel_ml
    ordered = {col: values[col] for col in metric_columns()}
    ordered.update({col: volumes[col] for col in VOLUME_NAMES})
    return ordered
