"""Lesion-aware post-processing: remove predicted components below a per-region size.

Since BraTS 2023 the challenges rank on lesion-wise Dice, where every false-positive component
counts as a lesion with Dice 0 (the BraTS 2023 ranking code); small spurious components then cost
far more than their few voxels do in the whole-volume Dice, and winning teams remove predicted
components below a size tuned per region on validation cases. Here:

* :func:`remove_small_lesions` (pure): per region, in the order WT, TC, ET, every 26-connected
  component (the connectivity of both lesion-wise rule sets) with fewer voxels than the region's
  threshold is taken out of that region, keeping the label hierarchy (ET inside TC inside WT):

  - a small **WT** component becomes background (all its labels go);
  - a small **TC** component becomes edema: it stays tumour (WT is unchanged) but no longer core,
    and the ET inside it goes with it;
  - a small **ET** component becomes necrosis (NCR): it stays core (TC and WT are unchanged), as
    the two-stage paper's ET threshold relabels ET (sec. 3.4, :func:`~.postprocess.postprocess_et`).

  So each step changes its own region and the regions inside it only, never the regions around
  it, and the three thresholds can be tuned one after the other.
* :func:`tune_min_lesion_voxels`: the thresholds chosen on validation cases, WT first, then TC on
  labels with the WT threshold applied, then ET, each maximising the mean of a caller-given score
  over the regions its removal changes (a WT threshold over WT, TC and ET)
  (``tune-postprocess`` passes the BraTS 2023 lesion-wise Dice of
  :func:`cascadeseg.evaluation.lesions.lesion_matching`: the scorer comes from above, so this
  layer does not import the evaluation layer).
* :func:`resolve_min_lesion_voxels` / :func:`postprocess_lesions`: the thresholds ``predict``
  uses: the ones stored with the model (``postprocess.json`` of ``tune-postprocess``),
  overridden per region by ``--min-lesion-voxels``.
* :func:`summarise_lesions` / :func:`lesion_summary`: lesion counts and volumes per region for
  ``predict``'s per-case JSON (from the components :func:`postprocess_lesions` labelled).

Thresholds are in voxels of the grid the label lies on (the source grid in ``predict``), like
``et_min_voxels``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from cascadeseg.data.labels import ED, ET, NCR
from cascadeseg.errors import ConfigError

#: Regions of lesion-wise post-processing, in the order they are applied and tuned.
LESION_REGIONS: tuple[str, ...] = ("wt", "tc", "et")
#: Default candidate thresholds of ``tune-postprocess`` (voxels; 1 mm^3 each on BraTS data).
DEFAULT_LESION_CANDIDATES: tuple[int, ...] = (0, 5, 10, 20, 50, 100, 200, 400)
_CONN26 = np.ones((3, 3, 3), dtype=bool)

#: ``score(pred_mask, ref_mask, spacing) -> float``: higher is better (e.g. lesion-wise Dice).
LesionScore = Callable[[np.ndarray, np.ndarray, Sequence[float]], float]


def region_mask(label: np.ndarray, region: str) -> np.ndarray:
    """Boolean ``(X, Y, Z)`` mask of ``region`` (``wt``, ``tc``, ``et``) of an internal label
    map."""
    label = np.asarray(label)
    if region == "wt":
        return label > 0
    if region == "tc":
        return (label == NCR) | (label == ET)
    if region == "et":
        return label == ET
    raise ValueError(f"unknown region {region!r} (known: {', '.join(LESION_REGIONS)})")


def _component_sizes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected component labels of ``mask`` and each label's voxel count (index 0: rest)."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=_CONN26)
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


#: What a removed component of each region becomes (see the module docstring).
_REPLACEMENT = {"wt": 0, "tc": ED, "et": NCR}

#: Region -> voxel counts of its 26-connected components (the lesions of the BraTS lesion-wise
#: rules), e.g. ``{"wt": array([812, 40]), "tc": ..., "et": ...}``.
ComponentSizes = dict[str, np.ndarray]


def remove_small_lesions(label: np.ndarray, min_voxels: Mapping[str, int]) -> np.ndarray:
    """Remove predicted components below a per-region size (module docstring for the labels).

    Args:
        label: ``(X, Y, Z)`` internal label map (0 background, 1 NCR, 2 ED, 3 ET).
        min_voxels: region (``wt``, ``tc``, ``et``) -> components with fewer voxels go; a
            missing region or a value ``<= 1`` leaves that region alone.

    Returns:
        A new ``(X, Y, Z)`` label map of the same dtype (the input is not modified).
    """
    return _remove_small(label, min_voxels)[0]


def _remove_small(
    label: np.ndarray, min_voxels: Mapping[str, int], *, measure: bool = False
) -> tuple[np.ndarray, dict[str, int], ComponentSizes]:
    """:func:`remove_small_lesions`, the number of components removed per region and, with
    ``measure``, the sizes of the components left (each region labelled once, in the order
    WT, TC, ET; later steps never split, merge or shrink an earlier region's components)."""
    out = np.array(label, copy=True)
    removed: dict[str, int] = {}
    kept: ComponentSizes = {}
    for region in LESION_REGIONS:
        threshold = int(min_voxels.get(region, 0))
        removed[region] = 0
        mask = region_mask(out, region)
        if not measure and (threshold <= 1 or not np.any(mask)):
            continue
        components, sizes = _component_sizes(mask)
        small = sizes < threshold if threshold > 1 else np.zeros(sizes.shape, dtype=bool)
        small[0] = False
        out[small[components]] = _REPLACEMENT[region]
        removed[region] = int(np.count_nonzero(small))
        kept[region] = sizes[1:][~small[1:]]
    return out, removed, kept


@dataclass(frozen=True)
class LesionTuneResult:
    """Outcome of :func:`tune_min_lesion_voxels`.

    Attributes:
        best: region -> chosen threshold (voxels).
        mean_score: region -> candidate -> the objective: the mean over the regions the
            removal changes of the mean score over the cases (with the thresholds of the
            regions before it applied).
        n_cases: number of cases.
        processed: the cases' predictions with the chosen thresholds applied, in case order.
    """

    best: dict[str, int]
    mean_score: dict[str, dict[int, float]]
    n_cases: int
    processed: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)


#: The regions each region's removal changes (itself and the regions inside it): a WT threshold
#: is judged on WT, TC and ET, a TC threshold on TC and ET, an ET threshold on ET.
AFFECTED_REGIONS: dict[str, tuple[str, ...]] = {
    "wt": ("wt", "tc", "et"),
    "tc": ("tc", "et"),
    "et": ("et",),
}


def tune_min_lesion_voxels(
    cases: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    score: LesionScore,
    candidates: Sequence[int] = DEFAULT_LESION_CANDIDATES,
) -> LesionTuneResult:
    """Choose each region's threshold on validation cases, WT first, then TC, then ET.

    A region's threshold is judged on every region its removal changes
    (:data:`AFFECTED_REGIONS`): the objective is the mean over those regions of the mean
    ``score`` over the cases. Judging the WT threshold on WT alone was measured to pick a size
    that took whole small tumours (satellites outside the main tumour) and their cores with it:
    WT lesion-wise Dice rose and TC/ET fell (docs/results-lesion-postprocess.md).

    Args:
        cases: per case ``(prediction, reference, spacing)``: internal label maps ``(X, Y, Z)``
            on one grid (the prediction *before* lesion post-processing) and the voxel size (mm).
        score: ``score(pred_mask, ref_mask, spacing)`` of one region, higher is better; NaN
            scores (nothing to score) are left out of the means.
        candidates: thresholds in voxels (0 = keep every component).

    Returns:
        :class:`LesionTuneResult` (``mean_score``: the objective per candidate); ties go to the
        smallest threshold (the least change).

    Raises:
        ValueError: no cases or no candidates.
    """
    if not cases:
        raise ValueError("tune_min_lesion_voxels needs at least one case")
    if not candidates:
        raise ValueError("tune_min_lesion_voxels needs at least one candidate")
    refs = {r: [region_mask(ref, r) for _, ref, _ in cases] for r in LESION_REGIONS}
    spacings = [spacing for _, _, spacing in cases]
    chosen: dict[str, int] = {}
    means: dict[str, dict[int, float]] = {}
    current = [np.asarray(pred) for pred, _, _ in cases]
    for region in LESION_REGIONS:
        means[region] = {}
        # Each case's components of this region are labelled once, for every candidate.
        components = [_component_sizes(region_mask(pred, region)) for pred in current]
        for candidate in sorted({int(c) for c in candidates}):
            processed = [
                _without_small(pred, labels, sizes, candidate, region)
                for pred, (labels, sizes) in zip(current, components)
            ]
            per_region = []
            for affected in AFFECTED_REGIONS[region]:
                values = [
                    score(region_mask(pred, affected), ref, spacing)
                    for pred, ref, spacing in zip(processed, refs[affected], spacings)
                ]
                finite = [v for v in values if not math.isnan(v)]
                per_region.append(float(np.mean(finite)) if finite else math.nan)
            finite_regions = [v for v in per_region if not math.isnan(v)]
            means[region][candidate] = (
                float(np.mean(finite_regions)) if finite_regions else math.nan
            )
        scored = {c: v for c, v in means[region].items() if not math.isnan(v)}
        best = max(scored, key=lambda c: (scored[c], -c)) if scored else 0
        chosen[region] = best
        current = [
            _without_small(pred, labels, sizes, best, region)
            for pred, (labels, sizes) in zip(current, components)
        ]
    return LesionTuneResult(
        best=chosen, mean_score=means, n_cases=len(cases), processed=tuple(current)
    )


def _without_small(
    label: np.ndarray, components: np.ndarray, sizes: np.ndarray, min_voxels: int, region: str
) -> np.ndarray:
    """``remove_small_lesions(label, {region: min_voxels})`` from ``region``'s components."""
    out = np.array(label, copy=True)
    if min_voxels > 1:
        small = sizes < min_voxels
        small[0] = False
        out[small[components]] = _REPLACEMENT[region]
    return out


def parse_min_lesion_voxels(text: str) -> dict[str, int]:
    """``--min-lesion-voxels`` text -> thresholds: ``wt=N,tc=N,et=N`` (any subset) or ``N``
    (every region). Raises :class:`ConfigError` with a one-line message."""
    text = text.strip()
    try:
        if "=" not in text:
            return dict.fromkeys(LESION_REGIONS, _count(text))
        out: dict[str, int] = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            key = key.strip().lower()
            if key not in LESION_REGIONS:
                raise ValueError(f"unknown region {key!r}")
            out[key] = _count(value)
        return out
    except ValueError as exc:
        raise ConfigError(
            f"--min-lesion-voxels: {exc}; expected wt=N,tc=N,et=N (any of them) or N"
        ) from None


def _count(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError(f"a threshold must be >= 0, got {value}")
    return value


def check_min_lesion_voxels(thresholds: Mapping[str, Any], source: str) -> dict[str, int]:
    """Thresholds as ``{region: int >= 0}``; :class:`ConfigError` naming ``source`` otherwise."""
    out: dict[str, int] = {}
    for key, value in dict(thresholds).items():
        if key not in LESION_REGIONS:
            raise ConfigError(f"{source}: min_lesion_voxels has unknown region {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"{source}: min_lesion_voxels[{key!r}] must be a non-negative integer, "
                f"got {value!r}"
            )
        out[key] = value
    return out


def resolve_min_lesion_voxels(
    stored: Mapping[str, int] | None, override: Mapping[str, int] | None
) -> tuple[dict[str, int], dict[str, str]]:
    """Per region: the override, else the stored value, else 0 (off); and where each came from
    (``option``, ``stored``, ``default (off)``)."""
    values: dict[str, int] = {}
    sources: dict[str, str] = {}
    for region in LESION_REGIONS:
        if override is not None and region in override:
            values[region], sources[region] = int(override[region]), "option"
        elif stored is not None and region in stored:
            values[region], sources[region] = int(stored[region]), "stored"
        else:
            values[region], sources[region] = 0, "default (off)"
    return values, sources


def postprocess_lesions(
    label: np.ndarray, stored: Mapping[str, int] | None, override: Mapping[str, int] | None
) -> tuple[np.ndarray, dict[str, Any], ComponentSizes]:
    """:func:`remove_small_lesions` with the resolved thresholds.

    Returns:
        ``(label, info, sizes)``: the new label map; a JSON-friendly record
        (``min_lesion_voxels``, ``min_lesion_voxels_source`` and the components removed per
        region); the voxel counts of the components left per region, for
        :func:`summarise_lesions` (so each region is labelled once per case).
    """
    values, sources = resolve_min_lesion_voxels(stored, override)
    out, removed, kept = _remove_small(label, values, measure=True)
    info = {
        "min_lesion_voxels": values,
        "min_lesion_voxels_source": sources,
        "lesions_removed": removed,
    }
    return out, info, kept


def summarise_lesions(sizes: ComponentSizes, spacing: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Lesion counts and volumes per region from their components' voxel counts.

    Args:
        sizes: region (``wt``, ``tc``, ``et``) -> voxel count of each component.
        spacing: voxel size in mm.

    Returns:
        ``{"WT": {"count": n, "volumes_ml": [largest first]}, "TC": ..., "ET": ...}``.
    """
    voxel_ml = math.prod(abs(float(s)) for s in spacing) / 1000.0
    out: dict[str, dict[str, Any]] = {}
    for region in LESION_REGIONS:
        counts = np.sort(np.asarray(sizes[region]))[::-1]
        volumes = [round(int(v) * voxel_ml, 4) for v in counts]
        out[region.upper()] = {"count": len(volumes), "volumes_ml": volumes}
    return out


def lesion_summary(label: np.ndarray, spacing: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Lesion counts and volumes per region of an internal label map (:func:`summarise_lesions`
    of the 26-connected components of each region, the lesions of the BraTS lesion-wise rules).

    Args:
        label: ``(X, Y, Z)`` internal label map.
        spacing: voxel size in mm.
    """
    return summarise_lesions(_remove_small(label, {}, measure=True)[2], spacing)
