"""Multi-focal synthetic cases: several tumours and satellites at chosen gaps, off by default."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cascadeseg.cli import main as cli_main
from cascadeseg.data.case import Case
from cascadeseg.data.labels import ET, NCR
from cascadeseg.data.synth import SynthConfig, case_seed, plan_case, synthesize_case

QUARTER = SynthConfig(shape_scale=0.25)
MULTI = SynthConfig(shape_scale=0.25, multifocal_prob=1.0)
HALF_MULTI = SynthConfig(shape_scale=0.5, multifocal_prob=1.0)
#: 26-connectivity (BraTS 2023 lesions) and the 18-neighbourhood of its ground-truth dilation.
CONN26 = np.ones((3, 3, 3), dtype=bool)
NEIGH18 = ndimage.generate_binary_structure(3, 2)

#: sha256 of image and label bytes of two default cases at 4 mm, made before multi-focal cases
#: existed: the option's default leaves every case as it was. (Computed on an x86-64 Linux
#: machine with numpy's bundled OpenBLAS.)
DEFAULT_HASHES = {
    0: "3a401aaa919fc9ae11cd307b1a712b8768c36ade359202dea02e9d4c0dea5e9b",
    1: "876a58d946355ce6c6acfe56ca1d8087670a81a5949814702ac12b8abbf99ec1",
}


def _hash(case: Case) -> str:
    assert case.label is not None
    return hashlib.sha256(case.image.tobytes() + case.label.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def multi_cases() -> list[Case]:
    return [synthesize_case(s, case_id=f"m{s}", config=HALF_MULTI) for s in range(4)]


def _regions(label: np.ndarray) -> dict[str, np.ndarray]:
    return {"wt": label > 0, "tc": (label == NCR) | (label == ET)}


@pytest.mark.parametrize("seed", sorted(DEFAULT_HASHES))
def test_default_cases_are_unchanged(seed: int) -> None:
    case = synthesize_case(seed, case_id="x", config=QUARTER)
    assert _hash(case) == DEFAULT_HASHES[seed]
    assert "satellites" not in case.meta.extra["synth"]


def test_multifocal_is_deterministic_and_differs_from_default() -> None:
    a = synthesize_case(3, case_id="a", config=MULTI)
    b = synthesize_case(3, case_id="b", config=MULTI)
    assert _hash(a) == _hash(b)
    assert a.meta.extra["synth"]["satellites"] == b.meta.extra["synth"]["satellites"]
    assert _hash(a) != _hash(synthesize_case(3, case_id="c", config=QUARTER))


def test_plan_counts_tumours_and_satellites() -> None:
    for seed in range(20):
        plan = plan_case(seed, MULTI)
        assert plan.n_lesions >= 2 and plan.n_satellites >= 1
        assert plan.n_lesions + plan.n_satellites <= MULTI.max_lesions
        assert plan_case(seed, QUARTER).n_satellites == 0
    few = SynthConfig(shape_scale=0.25, multifocal_prob=1.0, max_lesions=2)
    assert all(plan_case(s, few).n_lesions + plan_case(s, few).n_satellites <= 2 for s in range(20))
    some = SynthConfig(multifocal_prob=0.3)
    share = np.mean([plan_case(s, some).n_satellites > 0 for s in range(400)])
    assert 0.24 < share < 0.36


def test_lesion_counts(multi_cases: list[Case]) -> None:
    """Every multi-focal case has several tumour cores; each satellite is a component of its own
    in its region, not the largest one."""
    n_satellites = 0
    for case in multi_cases:
        assert case.label is not None
        record = case.meta.extra["synth"]
        regions = _regions(case.label)
        _, n_tc = ndimage.label(regions["tc"], CONN26)
        assert n_tc >= 1 + len(record["satellites"])
        for sat in record["satellites"]:
            components, _ = ndimage.label(regions[sat["region"]], CONN26)
            own = components[tuple(round(v) for v in sat["centre_voxel"])]
            assert own > 0
            sizes = np.bincount(components.ravel())[1:]
            assert sizes[own - 1] < sizes.max()
        n_satellites += len(record["satellites"])
    assert n_satellites >= len(multi_cases)


def test_near_satellites_merge_under_the_brats2023_dilation_far_ones_do_not(
    multi_cases: list[Case],
) -> None:
    kinds = set()
    for case in multi_cases:
        assert case.label is not None
        for name, mask in _regions(case.label).items():
            components, _ = ndimage.label(mask, CONN26)
            dilated = ndimage.binary_dilation(mask, NEIGH18, iterations=3)
            groups, _ = ndimage.label(dilated, CONN26)
            for sat in case.meta.extra["synth"]["satellites"]:
                if sat["region"] != name:
                    continue
                point = tuple(round(v) for v in sat["centre_voxel"])
                members = set(np.unique(components[groups == groups[point]])) - {0}
                # near: joined with the tumour under the BraTS 2023 rule; far: a lesion alone.
                assert (len(members) > 1) == (sat["kind"] == "near"), sat
                kinds.add(sat["kind"])
    assert kinds == {"near", "far"}


def test_satellites_show_in_the_image(multi_cases: list[Case]) -> None:
    """The image holds what the label holds: T1ce is bright on enhancing satellites."""
    for case in multi_cases:
        assert case.label is not None
        if not case.meta.extra["synth"]["has_et"]:
            continue
        t1ce = case.image[2]
        brain = case.image[0] > 0
        et = case.label == ET
        assert t1ce[et].mean() > 1.2 * np.median(t1ce[brain & (case.label == 0)])


def test_cli_multifocal(tmp_path: Path) -> None:
    from cascadeseg.data.layouts import discover_cases, read_case

    out = tmp_path / "data"
    argv = ["synth", str(out), "--cases", "1", "--seed", "2", "--scale", "0.25"]
    assert cli_main([*argv, "--multifocal-prob", "1", "--max-lesions", "4", "--no-progress"]) == 0
    case = read_case(discover_cases(out)[0])
    config = SynthConfig(shape_scale=0.25, multifocal_prob=1.0, max_lesions=4)
    expected = synthesize_case(case_seed(2, 0), case_id="x", config=config)
    np.testing.assert_array_equal(case.label, expected.label)


@pytest.mark.parametrize(
    "extra", [["--multifocal-prob", "1.5"], ["--multifocal-prob", "-0.1"], ["--max-lesions", "1"]]
)
def test_cli_rejects_bad_multifocal_options(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["synth", str(tmp_path / "x"), "--scale", "0.25", *extra]) == 2
    assert extra[0] in capsys.readouterr().err


def test_demo_rejects_bad_multifocal_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["demo", "--out", str(tmp_path / "d"), "--multifocal-prob", "2"]) == 2
    assert "--multifocal-prob" in capsys.readouterr().err
    assert not (tmp_path / "d" / "data").exists()
