"""Lesion-wise metrics: hand-computed cases for both rule sets, empty cases, per-lesion records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cascadeseg.evaluation.lesions import (
    BRATS2023_FP_HD95,
    PANOPTICA_INF_HD95,
    challenge_parameters,
    connected_lesions,
    lesion_matching,
    surfel_hd95,
)
from cascadeseg.evaluation.metrics import hd95

SHAPE = (24, 24, 24)


def _mask(*boxes: tuple[slice, ...]) -> np.ndarray:
    m = np.zeros(SHAPE, dtype=bool)
    for box in boxes:
        m[box] = True
    return m


CUBE_A = np.s_[2:6, 2:6, 2:6]  # 64 voxels
CUBE_A_SHIFTED = np.s_[3:7, 2:6, 2:6]  # overlap 48: Dice 0.75
CUBE_B = np.s_[14:17, 14:17, 14:17]  # 27 voxels
SPECK = np.s_[20:21, 20:21, 20:21]  # 1 voxel


def test_panoptica_match_miss_and_false_positive_by_hand():
    ref = _mask(CUBE_A, CUBE_B)
    pred = _mask(CUBE_A_SHIFTED, SPECK)
    r = lesion_matching(pred, ref, rules="panoptica")
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    assert r.f1 == pytest.approx(1 / (1 + 0.5 + 0.5))
    assert r.dice == pytest.approx(0.75)
    # Two 4-voxel cubes one voxel apart: 40 of the 112 pooled border distances are 1, the rest 0.
    assert r.hd95 == pytest.approx(1.0)
    assert r.nsd == pytest.approx(1.0)
    by_status = {(les.source, les.status): les for les in r.lesions}
    assert by_status[("reference", "missed")].voxels == 27
    assert by_status[("prediction", "false_positive")].voxels == 1
    matched = by_status[("reference", "matched")]
    assert matched.dice == pytest.approx(0.75)
    assert matched.volume_ml == pytest.approx(0.064)
    assert matched.centroid_voxel == pytest.approx((3.5, 3.5, 3.5))


def test_panoptica_pair_hd95_is_the_global_hd95_of_the_pair_with_spacing():
    ref = _mask(CUBE_A)
    pred = _mask(np.s_[3:8, 1:6, 2:7])
    spacing = (1.0, 1.5, 0.8)
    r = lesion_matching(pred, ref, spacing, rules="panoptica")
    assert r.hd95 == pytest.approx(hd95(pred, ref, spacing))


def test_split_prediction_differs_between_rule_sets():
    """A 90-voxel bar predicted as two 36-voxel pieces (the docs' worked example)."""
    ref = _mask(np.s_[2:12, 2:5, 2:5])
    pred = _mask(np.s_[2:6, 2:5, 2:5], np.s_[8:12, 2:5, 2:5])
    pan = lesion_matching(pred, ref, rules="panoptica")
    assert (pan.tp, pan.fp, pan.fn) == (1, 1, 0)  # one piece matched, the other a false positive
    assert pan.dice == pytest.approx(2 * 36 / (90 + 36))
    b23 = lesion_matching(pred, ref, rules="brats2023")
    assert (b23.tp, b23.fp, b23.fn) == (1, 0, 0)  # both pieces count for the bar
    assert b23.dice == pytest.approx(2 * 72 / (90 + 72))


def test_brats2023_satellite_within_dilation_joins_its_tumour():
    main, satellite = np.s_[4:10, 4:10, 4:10], np.s_[13:15, 4:6, 4:6]  # gap of 3 voxels
    ref = _mask(main, satellite)
    pred = _mask(main)
    b23 = lesion_matching(pred, ref, rules="brats2023")
    assert (b23.tp, b23.fp, b23.fn) == (1, 0, 0)
    assert b23.dice == pytest.approx(2 * 216 / (224 + 216))
    pan = lesion_matching(pred, ref, rules="panoptica")
    assert (pan.tp, pan.fp, pan.fn) == (1, 0, 1)
    assert pan.dice == pytest.approx(1.0)
    # With a 1-iteration dilation (MEN/MET) the dilated masks (reaching x = 10 and x = 12) do not
    # touch: two lesions; the satellite (8 voxels) is kept for MET (threshold 2) and missed.
    met = lesion_matching(pred, ref, rules="brats2023", challenge="MET")
    assert (met.tp, met.fp, met.fn) == (1, 0, 1)
    assert met.dice == pytest.approx(0.5)
    assert met.hd95 == pytest.approx((0.0 + BRATS2023_FP_HD95) / 2)


def test_brats2023_false_positive_costs_a_full_lesion():
    ref = _mask(CUBE_A)
    pred = _mask(CUBE_A, SPECK)
    b23 = lesion_matching(pred, ref, rules="brats2023")
    assert (b23.tp, b23.fp, b23.fn) == (1, 1, 0)
    assert b23.dice == pytest.approx(0.5)
    assert b23.hd95 == pytest.approx(BRATS2023_FP_HD95 / 2)
    pan = lesion_matching(pred, ref, rules="panoptica")
    assert (pan.dice, pan.hd95) == (pytest.approx(1.0), pytest.approx(0.0))
    assert pan.f1 == pytest.approx(1 / 1.5)


def test_brats2023_size_threshold_is_in_cubic_mm_and_spares_nearby_predictions():
    ref = _mask(CUBE_B)  # 27 voxels <= 50
    pred = _mask(np.s_[18:19, 14:15, 14:15])  # 1 voxel, 2 voxels from the speck: within reach
    r = lesion_matching(pred, ref, rules="brats2023")
    assert (r.tp, r.fp, r.fn) == (0, 0, 0)
    assert (r.dice, r.hd95) == (1.0, 0.0)
    statuses = sorted(les.status for les in r.lesions)
    assert statuses == ["below_threshold", "near_small"]
    # At 2 mm voxels the same speck is 216 mm^3: kept, and matched by the nearby component.
    r2 = lesion_matching(pred, ref, (2.0, 2.0, 2.0), rules="brats2023")
    assert (r2.tp, r2.fp, r2.fn) == (1, 0, 0)
    assert r2.dice == pytest.approx(0.0)  # touching the dilated lesion, no overlap


@pytest.mark.parametrize(
    ("pred_boxes", "ref_boxes", "panoptica", "brats2023"),
    [
        ((), (), (0, 0, 0, math.nan, math.nan, math.nan), (0, 0, 0, 1.0, 0.0)),
        ((), (CUBE_A,), (0, 0, 1, 0.0, 0.0, PANOPTICA_INF_HD95), (0, 0, 1, 0.0, 374.0)),
        ((CUBE_A,), (), (0, 1, 0, 0.0, 0.0, PANOPTICA_INF_HD95), (0, 1, 0, 0.0, 374.0)),
        ((SPECK,), (CUBE_A,), (0, 1, 1, 0.0, 0.0, PANOPTICA_INF_HD95), (0, 1, 1, 0.0, 374.0)),
    ],
)
def test_empty_and_zero_tp_conventions(pred_boxes, ref_boxes, panoptica, brats2023):
    pred, ref = _mask(*pred_boxes), _mask(*ref_boxes)
    p = lesion_matching(pred, ref, rules="panoptica")
    tp, fp, fn, f1, dice, hd = panoptica
    assert (p.tp, p.fp, p.fn) == (tp, fp, fn)
    for got, want in ((p.f1, f1), (p.dice, dice), (p.hd95, hd)):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)
    b = lesion_matching(pred, ref, rules="brats2023")
    assert (b.tp, b.fp, b.fn, b.dice, b.hd95) == pytest.approx(brats2023)


def test_panoptica_matching_is_one_to_one_and_maximises_total_dice():
    # Reference lesions L (27) and R (27); prediction P covers all of L and 9 voxels of R,
    # Q covers 9 other voxels of R. Optimal assignment: P-L, Q-R (not P-R).
    ref = _mask(np.s_[2:5, 2:5, 2:5], np.s_[2:5, 7:10, 2:5])
    pred = _mask(np.s_[2:5, 2:5, 2:5], np.s_[2:5, 5:8, 2:5], np.s_[2:5, 9:10, 2:5])
    r = lesion_matching(pred, ref, rules="panoptica")
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)
    # P = L plus a 3x3x3 bridge into R: 54 voxels, Dice with L 2*27/81; Q: 9 voxels in R.
    assert r.dice == pytest.approx((2 * 27 / (27 + 54) + 2 * 9 / (27 + 9)) / 2)


def test_surfel_hd95_of_two_voxels_by_hand():
    a = np.zeros((8, 4, 4), bool)
    b = np.zeros_like(a)
    a[1, 1, 1] = True
    b[4, 1, 1] = True  # corner points 2 and 3 voxels apart, equal areas: 95th percentile 3
    assert surfel_hd95(a, b, (1, 1, 1)) == pytest.approx(3.0)
    assert surfel_hd95(a, b, (2, 1, 1)) == pytest.approx(6.0)
    assert surfel_hd95(a, a, (1, 1, 1)) == 0.0
    assert math.isinf(surfel_hd95(a, np.zeros_like(a), (1, 1, 1)))


def test_connected_lesions_and_affine_centroid():
    mask = _mask(CUBE_A, np.s_[10:12, 10:11, 10:11])
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (100.0, 0.0, -5.0)
    lesions = connected_lesions(mask, (2.0, 1.0, 1.0), affine=affine)
    assert [les.voxels for les in lesions] == [64, 2]
    assert lesions[0].volume_ml == pytest.approx(0.128)
    assert lesions[1].centroid_voxel == pytest.approx((10.5, 10.0, 10.0))
    assert lesions[1].centroid_mm == pytest.approx((121.0, 10.0, 5.0))
    assert connected_lesions(np.zeros(SHAPE, bool)) == []


def test_diagonal_neighbours_are_one_lesion():
    m = np.zeros(SHAPE, bool)
    m[5, 5, 5] = m[6, 6, 6] = True  # corner contact: one 26-connected component
    assert len(connected_lesions(m)) == 1


def test_bad_arguments():
    m = _mask(CUBE_A)
    with pytest.raises(ValueError, match="unknown lesion rules"):
        lesion_matching(m, m, rules="nope")
    with pytest.raises(ValueError, match="unknown challenge"):
        lesion_matching(m, m, rules="brats2023", challenge="XYZ")
    with pytest.raises(ValueError, match="3D masks"):
        lesion_matching(m, m[:-1])
    assert challenge_parameters("BraTS-MET") == (1, 2.0)


@pytest.mark.parametrize("rules", ["panoptica", "brats2023"])
@pytest.mark.parametrize("seed", range(4))
def test_clusters_give_the_figures_of_one_pass_over_the_whole_grid(rules, seed):
    """Scoring lesion clusters on their own boxes equals scoring the whole grid at once."""
    from lesion_cases import make_lesion_case

    from cascadeseg.evaluation import lesions

    ref, pred = make_lesion_case(seed, shape=(96, 80, 64))
    p, r = np.isin(pred, (1, 2, 3)), np.isin(ref, (1, 2, 3))
    fast = lesion_matching(p, r, (1.0, 1.2, 0.9), rules=rules)
    args = (p, r, (1.0, 1.2, 0.9), (0, 0, 0), None)
    whole = (
        lesions._panoptica_part(*args)
        if rules == "panoptica"
        else lesions._brats2023_part(*args, 3, 50.0)
    )
    slow = lesions._combine(rules, [whole])
    assert (fast.tp, fast.fp, fast.fn) == (slow.tp, slow.fp, slow.fn)
    assert fast.dice == pytest.approx(slow.dice, nan_ok=True)
    assert fast.hd95 == pytest.approx(slow.hd95, nan_ok=True)
    key = lambda les: (les.source, les.voxels, tuple(round(c, 6) for c in les.centroid_voxel))  # noqa: E731
    assert sorted(map(key, fast.lesions)) == sorted(map(key, slow.lesions))
