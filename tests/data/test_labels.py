"""Label conventions and region derivation."""

from __future__ import annotations

import numpy as np
import pytest

from cascadeseg.data import labels
from cascadeseg.errors import InputError


@pytest.mark.parametrize(
    ("convention", "source", "internal"),
    [
        ("brats2021", [0, 1, 2, 4], [0, 1, 2, 3]),
        ("brats2023", [0, 1, 2, 3], [0, 1, 2, 3]),
        ("brats2024", [0, 1, 2, 3, 4], [0, 1, 2, 3, 0]),
        ("msd", [0, 1, 2, 3], [0, 2, 1, 3]),
        ("nnunet_brats", [0, 1, 2, 3], [0, 2, 1, 3]),
    ],
)
def test_to_internal(convention: str, source: list[int], internal: list[int]) -> None:
    out = labels.to_internal(np.array(source, dtype=np.int16), convention)
    assert out.dtype == np.uint8
    assert out.tolist() == internal


@pytest.mark.parametrize("convention", ["brats2021", "brats2023", "msd", "internal"])
def test_round_trip(convention: str) -> None:
    internal = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    back = labels.to_internal(labels.from_internal(internal, convention), convention)
    np.testing.assert_array_equal(back, internal)


def test_brats2021_writes_four_for_et() -> None:
    assert labels.from_internal(np.array([3, 1]), "brats2021").tolist() == [4, 1]


def test_bad_values_name_the_source() -> None:
    with pytest.raises(InputError, match=r"seg\.nii\.gz: label values \[3\]"):
        labels.to_internal(np.array([0, 3]), "brats2021", source="seg.nii.gz")
    with pytest.raises(InputError, match=r"label values \[-1, 7\]"):
        labels.to_internal(np.array([-1, 7, 1]), "brats2023")
    with pytest.raises(InputError, match="non-integer"):
        labels.to_internal(np.array([0.5]), "brats2023")
    with pytest.raises(InputError, match="unknown label convention"):
        labels.get_convention("nope")


def test_regions_hierarchy() -> None:
    # background, NCR, ED, ET
    label = np.array([0, 1, 2, 3])
    regions = labels.label_to_regions(label)
    assert regions.shape == (3, 4)
    assert regions[0].tolist() == [False, True, True, True]  # WT
    assert regions[1].tolist() == [False, True, False, True]  # TC
    assert regions[2].tolist() == [False, False, False, True]  # ET
    np.testing.assert_array_equal(labels.regions_to_label(regions), label)


def test_regions_to_label_enforces_nesting() -> None:
    # ET without TC/WT and TC without WT are dropped; WT alone is edema.
    regions = np.array([[0, 0, 1, 1], [1, 0, 0, 1], [1, 1, 0, 0]], dtype=bool)
    assert labels.regions_to_label(regions).tolist() == [0, 0, 2, 1]


def test_probabilities_to_label_threshold() -> None:
    probs = np.array([[0.9, 0.9, 0.4], [0.8, 0.2, 0.9], [0.6, 0.1, 0.9]])
    assert labels.probabilities_to_label(probs).tolist() == [3, 2, 0]


# Voxels: background, edema, a confident core, an under-confident core, a doubtful ET that the
# default TC threshold keeps out of the core.
PROBS_WITHOUT_ET = np.array(
    [
        [0.1, 0.9, 0.9, 0.9, 0.9],  # WT
        [0.1, 0.1, 0.8, 0.35, 0.4],  # TC
        [0.0, 0.0, 0.1, 0.1, 0.7],  # ET (inside TC nowhere at 0.5)
    ]
)


def test_tc_threshold_without_et_lowers_the_core_threshold_where_no_et_is_labelled() -> None:
    default = labels.probabilities_to_label(PROBS_WITHOUT_ET)
    assert default.tolist() == [0, labels.ED, labels.NCR, labels.ED, labels.ED]
    low = labels.probabilities_to_label(PROBS_WITHOUT_ET, 0.5, tc_threshold_without_et=0.3)
    # The under-confident core joins TC; the last voxel joins it as necrosis, not ET (the case
    # was labelled without enhancing tumour and keeps none).
    assert low.tolist() == [0, labels.ED, labels.NCR, labels.NCR, labels.NCR]
    # Equal to the threshold, or None: the plain thresholding.
    for same in (None, 0.5):
        np.testing.assert_array_equal(
            labels.probabilities_to_label(PROBS_WITHOUT_ET, 0.5, same), default
        )


def test_tc_threshold_without_et_leaves_cases_with_enhancing_tumour_alone() -> None:
    probs = PROBS_WITHOUT_ET.copy()
    probs[1, 4] = 0.6  # now the ET voxel is inside TC: the case has enhancing tumour
    default = labels.probabilities_to_label(probs)
    assert labels.ET in default
    np.testing.assert_array_equal(labels.probabilities_to_label(probs, 0.5, 0.3), default)


def test_tc_threshold_without_et_above_threshold_shrinks_the_core() -> None:
    label = labels.probabilities_to_label(PROBS_WITHOUT_ET, 0.5, tc_threshold_without_et=0.9)
    assert label.tolist() == [0, labels.ED, labels.ED, labels.ED, labels.ED]


def test_label_and_core_threshold_names_the_threshold_the_core_got() -> None:
    # WT everywhere, a core in voxels 2-3; ET in voxel 3 or nowhere.
    with_et = np.array([[0.9, 0.9, 0.9, 0.9], [0.1, 0.1, 0.8, 0.8], [0.0, 0.0, 0.0, 0.9]])
    without_et = with_et.copy()
    without_et[2] = 0.0
    assert labels.label_and_core_threshold(with_et, 0.5, 0.3)[1] == 0.5
    assert labels.label_and_core_threshold(without_et, 0.5, 0.3)[1] == 0.3
    assert labels.label_and_core_threshold(without_et, 0.4, None)[1] == 0.4
