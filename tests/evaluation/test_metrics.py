"""Metrics: hand-computed values, every empty combination, and agreement with independent code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from cascadeseg.evaluation.metrics import (
    BRATS_EMPTY_HD95,
    METRIC_NAMES,
    VOLUME_NAMES,
    case_metrics,
    dice,
    hd95,
    region_dice,
    sensitivity,
    soft_region_dice,
    specificity,
)
from cascadeseg.evaluation.surface import bounding_box, surface_distances


def _brute_force_borders(mask: np.ndarray) -> np.ndarray:
    """Border voxels without scipy: a voxel of the mask with a 6-neighbour outside it (or
    outside the array, as scipy's erosion with border_value=0 treats the edge)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    core = (slice(1, -1),) * mask.ndim
    for axis in range(mask.ndim):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[core]
    return mask & ~inner


def _brute_force_distances(pred, ref, spacing):
    bp = np.argwhere(_brute_force_borders(pred)) * np.asarray(spacing)
    br = np.argwhere(_brute_force_borders(ref)) * np.asarray(spacing)
    d = cdist(bp, br)
    return d.min(axis=1), d.min(axis=0)


def _brute_force_hd95(pred, ref, spacing):
    to_ref, to_pred = _brute_force_distances(pred, ref, spacing)
    return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))


def _random_blob(rng: np.random.Generator, shape, n_seeds: int = 3) -> np.ndarray:
    """A few random boxes (some touching the array edge)."""
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n_seeds):
        lo = [int(rng.integers(0, s - 1)) for s in shape]
        hi = [min(s, lo_i + int(rng.integers(1, max(2, s // 2)))) for lo_i, s in zip(lo, shape)]
        mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    mask &= rng.random(shape) > 0.1  # holes make the borders irregular
    return mask


# ----------------------------------------------------------------------------- hand-computed


def test_dice_sensitivity_specificity_by_hand():
    pred = np.zeros((2, 2, 2), bool)
    ref = np.zeros((2, 2, 2), bool)
    pred[0, 0, :] = True  # 2 voxels
    pred[1, 1, 1] = True  # 3 predicted
    ref[0, 0, 0] = True
    ref[1, 1, :] = True  # 3 reference; overlap (0,0,0) and (1,1,1): tp 2, fp 1, fn 1, tn 4
    assert dice(pred, ref) == pytest.approx(2 * 2 / (3 + 3))
    assert sensitivity(pred, ref) == pytest.approx(2 / 3)
    assert specificity(pred, ref) == pytest.approx(4 / 5)


def test_dice_empty_empty_is_one() -> None:
    empty = np.zeros((3, 3), bool)
    assert dice(empty, empty) == 1.0
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 1, 0], bool)
    assert dice(a, b) == pytest.approx(0.5)


def test_region_dice_hand_computed() -> None:
    pred = np.zeros((3, 2, 2), dtype=bool)
    ref = np.zeros((3, 2, 2), dtype=bool)
    pred[0] = [[1, 1], [0, 0]]  # WT: 2 predicted, 1 overlapping 1 reference -> 2*1/3
    ref[0] = [[1, 0], [0, 0]]
    pred[1] = [[1, 0], [0, 0]]  # TC: predicted but absent -> 0
    # ET: empty in both -> 1 (BraTS convention)
    np.testing.assert_allclose(region_dice(pred, ref), [2 / 3, 0.0, 1.0])


def test_soft_region_dice_hand_computed() -> None:
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]])
    ref = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    # WT: 2*0.5 / (0.5 + 1) = 2/3; TC: 2*1/(1+1) = 1; ET: both empty -> 1.
    expected = 1 - (2 / 3 + 1 + 1) / 3
    assert 1 - soft_region_dice(probs, ref, eps=0.0).mean() == pytest.approx(expected)


def test_hd95_two_voxels_isotropic_and_anisotropic():
    pred = np.zeros((8, 8, 8), bool)
    ref = np.zeros((8, 8, 8), bool)
    pred[2, 2, 2] = True
    ref[4, 2, 3] = True  # offset (2, 0, 1) voxels
    assert hd95(pred, ref) == pytest.approx(math.sqrt(5))
    # spacing (0.5, 1, 3) mm: (1 mm, 0, 3 mm) -> sqrt(10)
    assert hd95(pred, ref, (0.5, 1.0, 3.0)) == pytest.approx(math.sqrt(10))


def test_hd95_pools_both_directions():
    # Reference: a 5x1x1 bar; prediction: its first voxel. pred->ref: [0]; ref->pred: the bar's
    # border is all 5 voxels, at 0, 1, 2, 3, 4 from the prediction. Pooled: [0, 0, 1, 2, 3, 4],
    # 95th percentile (linear) = 3 + 0.75 * (4 - 3) = 3.75. MONAI's max of directed
    # percentiles would give max(0, 3.8) = 3.8.
    ref = np.zeros((7, 3, 3), bool)
    ref[1:6, 1, 1] = True
    pred = np.zeros_like(ref)
    pred[1, 1, 1] = True
    assert hd95(pred, ref) == pytest.approx(3.75)
    to_ref, to_pred = surface_distances(pred, ref)
    assert sorted(to_ref) == [0.0]
    assert sorted(to_pred) == [0.0, 1.0, 2.0, 3.0, 4.0]
    # spacing 2 mm along the bar doubles everything
    assert hd95(pred, ref, (2.0, 1.0, 1.0)) == pytest.approx(7.5)


def test_hd95_interior_voxels_are_not_border():
    # A 3x3x3 cube has 26 border voxels (centre eroded away); a prediction equal to the cube
    # gives HD95 0 and a prediction of only its centre sees distances 1, sqrt2, sqrt3.
    ref = np.zeros((5, 5, 5), bool)
    ref[1:4, 1:4, 1:4] = True
    assert hd95(ref, ref) == 0.0
    centre = np.zeros_like(ref)
    centre[2, 2, 2] = True
    to_ref, to_pred = surface_distances(centre, ref)
    assert to_pred.size == 26
    assert sorted(set(np.round(to_pred, 6))) == pytest.approx([1.0, math.sqrt(2), math.sqrt(3)])
    assert to_ref.tolist() == [1.0]


def test_empty_constant_is_grid_diagonal():
    assert BRATS_EMPTY_HD95 == pytest.approx(373.12866, abs=1e-5)


@pytest.mark.parametrize(
    ("pred_on", "ref_on", "expected"),
    [
        # (dice, hd95, sensitivity, specificity)
        (False, False, (1.0, 0.0, math.nan, 1.0)),
        (False, True, (0.0, BRATS_EMPTY_HD95, 0.0, 1.0)),
        (True, False, (0.0, BRATS_EMPTY_HD95, math.nan, 63 / 64)),
        (True, True, (1.0, 0.0, 1.0, 1.0)),
    ],
)
def test_every_empty_combination(pred_on, ref_on, expected):
    pred = np.zeros((4, 4, 4), bool)
    ref = np.zeros((4, 4, 4), bool)
    pred[1, 1, 1] = pred_on
    ref[1, 1, 1] = ref_on
    got = (dice(pred, ref), hd95(pred, ref), sensitivity(pred, ref), specificity(pred, ref))
    np.testing.assert_allclose(got, expected, equal_nan=True)


def test_specificity_nan_without_reference_negatives():
    ref = np.ones((2, 2, 2), bool)
    assert math.isnan(specificity(ref, ref))
    assert sensitivity(ref, ref) == 1.0


def test_hd95_custom_empty_value():
    pred = np.zeros((3, 3, 3), bool)
    ref = pred.copy()
    ref[1, 1, 1] = True
    assert hd95(pred, ref, empty_value=374.0) == 374.0


def test_bounding_box_padding_and_clipping():
    mask = np.zeros((6, 7, 8), bool)
    mask[0, 3, 5:7] = True
    assert bounding_box(mask, pad=1) == (slice(0, 2), slice(2, 5), slice(4, 8))
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None


# ----------------------------------------------------------------------------- case metrics


def test_case_metrics_by_hand():
    ref = np.zeros((4, 4, 4), np.uint8)
    pred = np.zeros((4, 4, 4), np.uint8)
    ref[1, 1, 1] = 3  # ET
    ref[1, 1, 2] = 1  # NCR
    ref[1, 2, 1] = 2  # ED
    pred[1, 1, 1] = 3  # ET right
    pred[1, 1, 2] = 2  # NCR called edema: in WT, not in TC
    pred[2, 2, 2] = 2  # false positive edema
    m = case_metrics(pred, ref, (1.0, 1.0, 2.0))
    assert list(m) == [*METRIC_NAMES, *VOLUME_NAMES]
    # WT: pred {111,112,222}, ref {111,112,121}: tp 2, fp 1, fn 1, tn 60
    assert m["dice_wt"] == pytest.approx(4 / 6)
    assert m["sens_wt"] == pytest.approx(2 / 3)
    assert m["spec_wt"] == pytest.approx(60 / 61)
    # TC: pred {111}, ref {111,112}: tp 1, fn 1
    assert m["dice_tc"] == pytest.approx(2 / 3)
    assert m["sens_tc"] == pytest.approx(0.5)
    assert m["spec_tc"] == 1.0
    # ET exact
    assert (m["dice_et"], m["hd95_et"], m["sens_et"], m["spec_et"]) == (1.0, 0.0, 1.0, 1.0)
    # TC HD95: pred border {111}, ref border {111,112}: distances [0] and [0, 2 mm] -> pooled
    # [0, 0, 2], 95th percentile = 0 + 0.9 * 2 = 1.8 mm
    assert m["hd95_tc"] == pytest.approx(1.8)
    # volumes: 2 mm^3 voxels = 0.002 mL
    assert m["vol_wt_pred_ml"] == pytest.approx(0.006)
    assert m["vol_tc_ref_ml"] == pytest.approx(0.004)


def test_case_metrics_empty_regions():
    ref = np.zeros((5, 5, 5), np.uint8)
    ref[2, 2, 2] = 2  # edema only: TC and ET empty in the reference
    pred = ref.copy()
    pred[0, 0, 0] = 3  # an ET voxel the reference lacks
    m = case_metrics(pred, ref)
    assert m["dice_wt"] == pytest.approx(2 / 3)
    assert m["dice_et"] == 0.0
    assert m["hd95_et"] == pytest.approx(BRATS_EMPTY_HD95)
    assert math.isnan(m["sens_et"]) and math.isnan(m["sens_tc"])
    assert m["spec_et"] == pytest.approx(124 / 125)
    both_empty = case_metrics(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 3), np.uint8))
    assert [both_empty[f"dice_{r}"] for r in ("wt", "tc", "et")] == [1.0, 1.0, 1.0]
    assert [both_empty[f"hd95_{r}"] for r in ("wt", "tc", "et")] == [0.0, 0.0, 0.0]


def test_case_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        case_metrics(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="internal labels"):
        case_metrics(np.full((2, 2, 2), 4, np.uint8), np.zeros((2, 2, 2), np.uint8))


# ----------------------------------------------------------------------------- independent code


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(5, 14, 3))
    spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, 3))
    pred, ref = _random_blob(rng, shape), _random_blob(rng, shape)
    if not pred.any() or not ref.any():
        pytest.skip("empty draw")
    assert hd95(pred, ref, spacing) == pytest.approx(_brute_force_hd95(pred, ref, spacing))
    to_ref, to_pred = surface_distances(pred, ref, spacing)
    bf_ref, bf_pred = _brute_force_distances(pred, ref, spacing)
    # argwhere order = C order = boolean-index order: element-wise equal
    np.testing.assert_allclose(to_ref, bf_ref, atol=1e-9)
    np.testing.assert_allclose(to_pred, bf_pred, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_case_metrics_crop_equals_full_volume(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (12, 10, 9)
    spacing = (1.0, 1.5, 2.0)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for label in (2, 1, 3):  # paint edema first, then core labels on top
        ref[_random_blob(rng, shape, 2)] = label
        pred[_random_blob(rng, shape, 2)] = label
    m = case_metrics(pred, ref, spacing)
    for key, labels in (("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,))):
        p, r = np.isin(pred, labels), np.isin(ref, labels)
        assert m[f"dice_{key}"] == pytest.approx(dice(p, r))
        np.testing.assert_allclose(m[f"sens_{key}"], sensitivity(p, r), equal_nan=True)
        np.testing.assert_allclose(m[f"spec_{key}"], specificity(p, r), equal_nan=True)
        if p.any() and r.any():
            assert m[f"hd95_{key}"] == pytest.approx(_brute_force_hd95(p, r, spacing))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
@pytest.mark.parametrize("seed", range(3))
def test_directed_percentiles_match_monai(seed):
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(200 + seed)
    shape = (16, 14, 12)
    spacing = (1.0, 1.2, 2.5)
    pred, ref = _random_blob(rng, shape), _random_blob(rng, shape)
    to_ref, to_pred = surface_distances(pred, ref, spacing)

    def monai_directed(a, b):
        t = lambda m: torch.from_numpy(m[None, None].astype(np.float32))  # noqa: E731
        value = compute_hausdorff_distance(
            t(a), t(b), include_background=True, percentile=95, directed=True, spacing=spacing
        )
        return float(value[0, 0])

    assert np.percentile(to_ref, 95) == pytest.approx(monai_directed(pred, ref), abs=1e-4)
    assert np.percentile(to_pred, 95) == pytest.approx(monai_directed(ref, pred), abs=1e-4)
    # pooling never exceeds MONAI's symmetric value (the max of the directed percentiles)
    assert hd95(pred, ref, spacing) <= max(np.percentile(to_ref, 95), np.percentile(to_pred, 95))


@pytest.mark.parametrize("seed", range(3))
def test_matches_medpy(seed):
    binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(300 + seed)
    shape = (15, 13, 11)
    spacing = (0.9, 1.1, 3.0)
    pred, ref = _random_blob(rng, shape), _random_blob(rng, shape)
    assert hd95(pred, ref, spacing) == pytest.approx(binary.hd95(pred, ref, voxelspacing=spacing))
    assert dice(pred, ref) == pytest.approx(binary.dc(pred, ref))
    assert sensitivity(pred, ref) == pytest.approx(binary.sensitivity(pred, ref))
    assert specificity(pred, ref) == pytest.approx(binary.specificity(pred, ref))
