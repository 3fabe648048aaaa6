"""Agreement with the official BraTS evaluation package (optional: skipped when not installed).

Install with ``pip install "cascadeseg[oracle]"`` (PyPI ``BraTS-evaluation``, which pulls
``panoptica``). The package is driven exactly as ``brats-evaluate --config gli`` drives it: its
bundled ``config_gli.yaml`` loaded into panoptica's ``Panoptica_Evaluator``. Generated
multi-lesion cases (``lesion_cases.py``) cover several tumours, satellites, specks, split
predictions, far false positives, missed lesions and empty regions, at 1 mm and anisotropic
spacing.
"""

from __future__ import annotations

import math
import warnings
from importlib.resources import files

import numpy as np
import pytest
from lesion_cases import make_lesion_case

from cascadeseg.evaluation.lesions import PANOPTICA_INF_HD95, lesion_matching

panoptica = pytest.importorskip("panoptica")
pytest.importorskip("brats_evaluation")

#: The package's region groups (config_gli.yaml) on BraTS 2023 label values (= internal values).
GROUPS = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,), "netc": (1,), "snfh": (2,)}


@pytest.fixture(scope="module")
def evaluator():
    config = files("brats_evaluation").joinpath("configs", "config_gli.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return panoptica.Panoptica_Evaluator.load_from_config(str(config))


def _close(got: float, want: float | None, tol: float) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return math.isnan(got)
    return abs(got - want) <= tol


def _expected(result: dict) -> tuple:
    hd = result["sq_hd95"]
    if hd is not None and math.isinf(hd):
        hd = PANOPTICA_INF_HD95  # the BraTS parser's value for an infinite HD95
    return (
        result["tp"],
        result["fp"],
        result["fn"],
        result["rq"],
        result["sq_dsc"],
        hd,
        result["sq_nsd"],
    )


def _compare(evaluator, ref: np.ndarray, pred: np.ndarray, spacing) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official = evaluator.evaluate(pred, ref, voxelspacing=spacing, verbose=False)
    problems = []
    for group, labels in GROUPS.items():
        want = _expected(official[group].to_dict())
        got = lesion_matching(np.isin(pred, labels), np.isin(ref, labels), spacing)
        ok = (got.tp, got.fp, got.fn) == want[:3]
        ok &= _close(got.f1, want[3], 1e-9) and _close(got.dice, want[4], 1e-4)
        ok &= _close(got.hd95, want[5], 0.01) and _close(got.nsd, want[6], 1e-4)
        if not ok:
            ours = (got.tp, got.fp, got.fn, got.f1, got.dice, got.hd95, got.nsd)
            problems.append(f"{group}: official {want}, ours {ours}")
    return problems


@pytest.mark.parametrize("seed", range(16))
def test_lesion_wise_figures_equal_the_official_package(evaluator, seed):
    ref, pred = make_lesion_case(seed)
    spacing = (1.0, 1.0, 1.0) if seed % 4 else (1.0, 1.2, 0.9)
    assert _compare(evaluator, ref, pred, spacing) == []


def test_empty_regions_equal_the_official_package(evaluator):
    ref, pred = make_lesion_case(3)
    empty = np.zeros_like(ref)
    for r, p in ((ref, empty), (empty, pred), (empty, empty)):
        assert _compare(evaluator, r, p, (1.0, 1.0, 1.0)) == []
