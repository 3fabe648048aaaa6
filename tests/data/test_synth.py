"""The synthetic BraTS generator: determinism, anatomy, label hierarchy, contrasts, hard cases."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cascadeseg.cli import main as cli_main
from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.labels import ED, ET, NCR
from cascadeseg.data.smooth_fields import bspline_matrix
from cascadeseg.data.synth import (
    SynthConfig,
    case_id_for,
    case_seed,
    plan_case,
    synthesize_case,
)
from cascadeseg.data.synth_anatomy import axis_lerp, radial_mass_effect_scale
from cascadeseg.data.synth_config import brats_affine
from cascadeseg.data.synth_intensity import subvoxel_shift
from cascadeseg.data.synth_tumour import smoothstep_ramp

# 2 mm voxels (120 x 120 x 78): tumour compartments keep their shape and a case takes < 1 s.
HALF = SynthConfig(shape_scale=0.5)
QUARTER = SynthConfig(shape_scale=0.25)
FLAIR, T1, T1CE, T2 = (MODALITIES.index(m) for m in ("flair", "t1", "t1ce", "t2"))
# Seeds of the default configuration whose plan is a hard case (found with plan_case; the plan
# does not depend on shape_scale): see test_default_seeds_trigger_the_hard_cases.
MULTIFOCAL_SEED, NO_ET_SEED, TINY_SEED, TYPICAL_SEED = 0, 3, 25, 1


@pytest.fixture(scope="module")
def typical() -> Case:
    return synthesize_case(TYPICAL_SEED, case_id="typical", config=HALF)


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    """Six cases at 2 mm with ET, of varied size (seeds chosen by plan, not by looking)."""
    seeds = [s for s in range(40) if plan_case(s).has_et and not plan_case(s).tiny][:6]
    return [synthesize_case(s, case_id=f"c{s}", config=HALF) for s in seeds]


# ------------------------------------------------------------------------------- pure helpers


def test_bspline_matrix_rows_are_partitions_of_unity() -> None:
    m = bspline_matrix(10, 5)
    assert m.shape == (10, 5)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    assert (m >= 0).all()
    # A constant control grid gives the same constant everywhere.
    np.testing.assert_allclose(m @ np.full(5, 3.0), 3.0, atol=1e-5)


def test_axis_lerp_interpolates_and_reads_zeros_outside() -> None:
    a = np.array([[0.0, 10.0, 20.0]], dtype=np.float32)
    out = axis_lerp(a, 1, np.array([0.0, 0.5, 1.25, 2.0, 2.5, -1.0]))
    np.testing.assert_allclose(out, [[0.0, 5.0, 12.5, 20.0, 10.0, 0.0]])


def test_subvoxel_shift_matches_hand_values() -> None:
    v = np.zeros((5, 1, 1), dtype=np.float32)
    v[2] = 1.0
    np.testing.assert_allclose(subvoxel_shift(v, (0.25, 0, 0))[:, 0, 0], [0, 0, 0.75, 0.25, 0])
    np.testing.assert_allclose(subvoxel_shift(v, (-1.0, 0, 0))[:, 0, 0], [0, 1, 0, 0, 0])


def test_smoothstep_ramp_is_half_at_the_border() -> None:
    np.testing.assert_allclose(
        smoothstep_ramp(np.array([-2.0, -0.5, 0.0, 0.5, 2.0]), 2.0), [0, 0.25, 0.5, 0.75, 1]
    )


def test_mass_effect_map_is_monotonic_and_identity_outside_support() -> None:
    r = np.linspace(0, 30, 301)
    s = radial_mass_effect_scale(r, strength=0.5, support=20.0)
    assert s[0] == pytest.approx(0.5)
    np.testing.assert_allclose(s[r >= 20], 1.0)
    assert (np.diff(r * s) > 0).all()  # r -> r s(r) never folds


# ---------------------------------------------------------------------------------- the cases


def test_default_is_full_brats_geometry() -> None:
    assert SynthConfig().shape == (240, 240, 155)
    assert SynthConfig().voxel_mm == 1.0
    assert HALF.shape == (120, 120, 78)


def test_full_size_case_shape_affine_dtype() -> None:
    case = synthesize_case(TYPICAL_SEED, case_id="BraTS2021_00001")
    assert case.image.shape == (4, 240, 240, 155)
    assert case.image.dtype == np.float32
    assert case.label is not None and case.label.shape == (240, 240, 155)
    assert case.label.dtype == np.uint8
    np.testing.assert_array_equal(case.meta.affine, brats_affine())
    assert case.meta.affine[1, 3] == 239.0 and case.meta.affine[0, 0] == -1.0
    assert case.meta.spacing == (1.0, 1.0, 1.0)
    assert case.meta.shape == (240, 240, 155)
    assert case.meta.source_layout == "synthetic"
    assert case.meta.label_convention == "brats2021"
    assert case.case_id == "BraTS2021_00001"
    image = case.image
    np.testing.assert_array_equal(image, np.rint(image))  # integral, like BraTS int16 files
    assert image.min() == 0.0 and image.max() <= 32767
    brain = image[0] > 0
    # One skull-stripping mask for all four modalities; values in the hundreds to thousands.
    for c in range(4):
        np.testing.assert_array_equal(image[c] > 0, brain)
        assert 100 < np.median(image[c][brain]) < 5000
    assert 1.0e6 < brain.sum() < 2.2e6  # an adult brain, 1-2.2 litres
    # Centred in the grid and inside it with a margin in-plane.
    xs, ys, _ = np.nonzero(brain)
    assert 100 < xs.mean() < 140 and 100 < ys.mean() < 140
    assert xs.min() > 20 and xs.max() < 220 and ys.min() > 10 and ys.max() < 230


def test_same_seed_same_arrays(typical: Case) -> None:
    again = synthesize_case(TYPICAL_SEED, case_id="typical", config=HALF)
    np.testing.assert_array_equal(again.image, typical.image)
    np.testing.assert_array_equal(again.label, typical.label)
    assert again.meta.extra["synth"] == typical.meta.extra["synth"]


def test_different_seeds_differ(typical: Case) -> None:
    other = synthesize_case(TYPICAL_SEED + 1, case_id="other", config=HALF)
    assert not np.array_equal(np.asarray(other.label), np.asarray(typical.label))
    either_brain = (other.image > 0) | (typical.image > 0)
    assert np.mean(other.image[either_brain] != typical.image[either_brain]) > 0.9


def test_label_hierarchy(cases: list[Case]) -> None:
    for case in cases:
        label = case.label
        assert label is not None
        brain = case.image[0] > 0
        assert set(np.unique(label)) <= {0, NCR, ED, ET}
        assert not np.any(label[~brain]), "tumour outside the brain"
        core = (label == NCR) | (label == ET)
        assert (label == ET).any() and (label == ED).any()
        # Edema surrounds the core: no core voxel touches healthy brain (6-neighbourhood).
        shell = ndimage.binary_dilation(core) & ~core & brain
        assert np.all(label[shell] > 0), case.case_id
        # Necrosis sits inside the enhancing rim: it does not touch edema or healthy tissue
        # along more than a sliver (irregular rims may be thin).
        ncr = label == NCR
        if ncr.sum() > 20:
            around_ncr = ndimage.binary_dilation(ncr) & ~ncr
            assert np.mean(label[around_ncr] == ET) > 0.7, case.case_id


def test_tumour_mostly_in_white_matter_and_sizes_vary(cases: list[Case]) -> None:
    volumes_ml = []
    for case in cases:
        assert case.label is not None
        voxel_ml = np.prod(case.meta.spacing) / 1000.0
        volumes_ml.append((case.label > 0).sum() * voxel_ml)
        # Lesion centres lie in the brain.
        brain = case.image[0] > 0
        for lesion in case.meta.extra["synth"]["lesions"]:
            i, j, k = (round(c) for c in lesion["centre_voxel"])
            assert brain[i, j, k]
    # Whole-tumour volumes of BraTS gliomas range from a few to a few hundred ml.
    assert min(volumes_ml) > 1.0 and max(volumes_ml) < 400.0
    assert max(volumes_ml) > 2.0 * min(volumes_ml)


def test_contrasts(cases: list[Case]) -> None:
    for case in cases:
        image, label = case.image, case.label
        assert label is not None
        brain = image[0] > 0
        healthy = brain & (label == 0)
        # Healthy white matter: the brightest healthy tissue on T1 (T1: WM > GM > CSF).
        wm = healthy & (image[T1] > np.percentile(image[T1][healthy], 80))
        csf = healthy & (image[T2] > np.percentile(image[T2][healthy], 97))
        et, ed, ncr = label == ET, label == ED, label == NCR

        def mean(c: int, mask: np.ndarray, image: np.ndarray = image) -> float:
            return float(image[c][mask].mean())

        # T2: CSF > WM; FLAIR: CSF suppressed (darker than WM).
        assert mean(T2, csf) > 1.5 * mean(T2, wm)
        assert mean(FLAIR, csf) < mean(FLAIR, wm)
        # Enhancing tumour bright on T1ce against healthy white matter.
        assert mean(T1CE, et) > 1.15 * mean(T1CE, wm), case.case_id
        # Edema bright on FLAIR and T2 against healthy tissue.
        assert mean(FLAIR, ed) > 1.3 * mean(FLAIR, healthy), case.case_id
        assert mean(T2, ed) > 1.3 * mean(T2, wm), case.case_id
        # Edema mildly dark on T1 against white matter.
        assert mean(T1, ed) < mean(T1, wm)
        if ncr.sum() > 20:
            # Necrosis dark on T1ce (below white matter and far below the enhancing rim).
            assert mean(T1CE, ncr) < mean(T1CE, wm), case.case_id
            assert mean(T1CE, ncr) < 0.6 * mean(T1CE, et), case.case_id


def test_mass_effect_moves_anatomy() -> None:
    no_push = synthesize_case(
        7, case_id="a", config=SynthConfig(shape_scale=0.5, mass_effect=(0, 0))
    )
    push = synthesize_case(
        7, case_id="b", config=SynthConfig(shape_scale=0.5, mass_effect=(0.5, 0.5))
    )
    assert no_push.label is not None and push.label is not None
    np.testing.assert_array_equal(no_push.image[0] > 0, push.image[0] > 0)  # skull fixed
    far = ndimage.distance_transform_edt(push.label == 0) > 30  # 30 voxels = 60 mm away
    near = (ndimage.distance_transform_edt(push.label == 0) < 8) & (push.label == 0)
    near &= push.image[0] > 0
    # Healthy tissue near the tumour changes, far away it does not (up to noise draws, which
    # are identical: same seed, same draws).
    diff = np.abs(push.image[T1] - no_push.image[T1])
    assert diff[far & (push.image[0] > 0)].mean() < 0.05 * diff[near].mean()


# ------------------------------------------------------------------------------- hard cases


def test_plan_frequencies_match_config() -> None:
    plans = [plan_case(s) for s in range(600)]
    no_et = np.mean([not p.has_et for p in plans])
    tiny = np.mean([p.tiny for p in plans])
    multi = np.mean([p.n_lesions > 1 for p in plans])
    assert 0.11 < no_et < 0.19  # p_no_et = 0.15 (LGG-like share of BraTS)
    assert 0.05 < tiny < 0.11  # p_tiny = 0.08
    assert 0.09 < multi < 0.16  # p_multifocal = 0.12


def test_default_seeds_trigger_the_hard_cases() -> None:
    assert plan_case(MULTIFOCAL_SEED).n_lesions >= 2
    assert not plan_case(NO_ET_SEED).has_et
    assert plan_case(TINY_SEED).tiny
    typical = plan_case(TYPICAL_SEED)
    assert typical.has_et and not typical.tiny and typical.n_lesions == 1


def test_no_et_case() -> None:
    case = synthesize_case(NO_ET_SEED, case_id="no_et", config=HALF)
    assert case.label is not None
    assert not (case.label == ET).any()
    assert (case.label == NCR).any() and (case.label == ED).any()
    assert case.meta.extra["synth"]["has_et"] is False
    forced = synthesize_case(5, case_id="forced", config=SynthConfig(shape_scale=0.5, p_no_et=1.0))
    assert forced.label is not None and not (forced.label == ET).any()


def test_tiny_case() -> None:
    case = synthesize_case(TINY_SEED, case_id="tiny", config=HALF)
    assert case.label is not None
    voxel_ml = np.prod(case.meta.spacing) / 1000.0
    core_ml = np.isin(case.label, (NCR, ET)).sum() * voxel_ml
    whole_ml = (case.label > 0).sum() * voxel_ml
    assert 0 < core_ml < 1.0 and 0 < whole_ml < 5.0  # BraTS WT: tens of ml typically


def test_multifocal_case() -> None:
    for seed, config in (
        (MULTIFOCAL_SEED, HALF),
        (4, SynthConfig(shape_scale=0.5, p_multifocal=1)),
    ):
        case = synthesize_case(seed, case_id="multi", config=config)
        assert case.label is not None
        assert case.meta.extra["synth"]["n_lesions"] >= 2
        core = np.isin(case.label, (NCR, ET))
        n_cores = ndimage.label(core, structure=np.ones((3, 3, 3)))[1]
        assert n_cores >= 2


# ------------------------------------------------------------------------------ ids, CLI, I/O


def test_case_ids_and_seeds() -> None:
    assert case_id_for("brats2021", 0) == "SynthBraTS2021_00000"
    assert case_id_for("brats2023", 12) == "BraTS-SYN-00012-000"
    assert case_id_for("msd", 3) == "SYNTH_003"
    # The layouts' naming patterns, never a real challenge id (BRATS-FACTS: BraTS2021_00000,
    # BraTS-GLI/SSA/MET/PED/MEN-00000-000, BRATS_001 in MSD, BraTS19_/BraTS20_Training_...).
    real = re.compile(r"^(BraTS20\d\d_\d+|BraTS-(GLI|SSA|MET|PED|MEN)-.*|BRATS_\d+|BraTS\d\d_.*)$")
    for layout in ("brats2021", "brats2023", "msd", "nnunet"):
        assert not real.match(case_id_for(layout, 0))
    assert case_seed(0, 1) != case_seed(0, 2) != case_seed(1, 1)
    assert case_seed(5, 3) == case_seed(5, 3)


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "msd"])
def test_cli_writes_a_dataset_the_readers_read(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascadeseg.data.layouts import detect_layout, discover_cases, read_case

    out = tmp_path / "data"
    status = cli_main(
        [
            "synth",
            str(out),
            "--cases",
            "2",
            "--seed",
            "3",
            "--layout",
            layout,
            "--scale",
            "0.25",
            "--no-progress",
        ]
    )
    assert status == 0
    assert str(out.resolve()) in capsys.readouterr().out
    assert not [p for p in out.rglob(".*")]  # no lock or temporary file left behind
    assert detect_layout(out) == layout
    refs = discover_cases(out)
    assert [r.case_id for r in refs] == [case_id_for(layout, i) for i in range(2)]
    for i, ref in enumerate(refs):
        case = read_case(ref)
        expected = synthesize_case(case_seed(3, i), case_id=ref.case_id, config=QUARTER)
        np.testing.assert_array_equal(case.image, expected.image)
        np.testing.assert_array_equal(case.label, expected.label)
        np.testing.assert_allclose(case.meta.affine, expected.meta.affine)


@pytest.mark.parametrize("layout", ["brats2021", "msd"])
def test_cli_refuses_to_replace_existing_files(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    argv = ["synth", str(out), "--cases", "2", "--layout", layout, "--scale", "0.25"]
    argv.append("--no-progress")
    assert cli_main(argv) == 0
    written = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    capsys.readouterr()
    assert cli_main([*argv[:-1], "--seed", "9", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    n_files = len(written)
    first = sorted(written)[0] if layout == "brats2021" else out / "imagesTr" / "SYNTH_000.nii.gz"
    assert f"{first}: exists ({n_files} of the {n_files} files synth would write exist)" in err[0]
    assert {p: p.read_bytes() for p in written} == written  # untouched
    assert cli_main([*argv, "--seed", "9", "--overwrite"]) == 0
    assert {p: p.read_bytes() for p in written} != written


def test_one_existing_file_stops_the_run_before_anything_is_written(tmp_path: Path) -> None:
    from cascadeseg.data.synth import synthesize_dataset
    from cascadeseg.errors import InputError

    out = tmp_path / "data"
    precious = out / "SynthBraTS2021_00001" / "SynthBraTS2021_00001_seg.nii.gz"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"a user's file")
    with pytest.raises(InputError, match=r"_00001_seg\.nii\.gz: exists \(1 of the 10 files"):
        synthesize_dataset(out, 2, seed=0, progress=False, config=QUARTER)
    assert precious.read_bytes() == b"a user's file"
    assert sorted(p.name for p in out.rglob("*")) == [precious.parent.name, precious.name]


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["synth", str(tmp_path / "x"), "--cases", "0"]) == 2
    assert "--cases" in capsys.readouterr().err


def test_bias_field_strength_is_brainweb_like() -> None:
    """The default bias field stays about within BrainWeb's strongest setting (40% INU: a field
    of 0.8 to 1.2 over the brain); ``bias_strength=(0, 0)`` gives no field at all."""
    spans = []
    for seed in range(4):
        flat = synthesize_case(
            seed, case_id="c", config=replace(QUARTER, bias_strength=(0.0, 0.0), noise_level=(0, 0))
        )
        strongest = synthesize_case(
            seed, case_id="c", config=replace(QUARTER, bias_strength=(0.1, 0.1), noise_level=(0, 0))
        )
        brain = flat.image[0] > 0
        ratio = strongest.image[:, brain] / flat.image[:, brain]
        ratio /= np.median(ratio, axis=1, keepdims=True)
        spans.append(np.percentile(ratio, [5, 95], axis=1))
    low, high = np.mean(spans, axis=0)
    assert (low > 0.8).all() and (high < 1.25).all()  # P5..P95, mean over cases
    assert (high > 1.05).all()  # but a field is there
    assert SynthConfig().bias_strength[1] <= 0.1


def test_cli_bias_strength(tmp_path: Path) -> None:
    from cascadeseg.data.layouts import discover_cases, read_case

    out = tmp_path / "flat"
    argv = ["synth", str(out), "--cases", "1", "--seed", "4", "--scale", "0.25", "--no-progress"]
    assert cli_main([*argv, "--bias-strength", "0", "0"]) == 0
    case = read_case(discover_cases(out)[0])
    expected = synthesize_case(
        case_seed(4, 0), case_id=case.case_id, config=replace(QUARTER, bias_strength=(0.0, 0.0))
    )
    np.testing.assert_array_equal(case.image, expected.image)
    assert cli_main([*argv[:1], str(tmp_path / "bad"), "--bias-strength", "0.2", "0.1"]) == 2


def test_cli_no_et_prob(tmp_path: Path) -> None:
    from cascadeseg.data.layouts import discover_cases, read_case

    out = tmp_path / "no_et"
    argv = ["synth", str(out), "--cases", "3", "--seed", "5", "--scale", "0.25", "--no-progress"]
    assert cli_main([*argv, "--no-et-prob", "1"]) == 0
    for ref in discover_cases(out):
        label = read_case(ref).label
        assert label is not None and (label == 1).any()  # a core, all of it non-enhancing
        assert not (label == 3).any() and not (label == 4).any()
    assert cli_main(["synth", str(tmp_path / "bad"), "--no-et-prob", "1.5"]) == 2
