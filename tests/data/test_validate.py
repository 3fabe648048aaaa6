"""Every kind of bad input gives one line naming the file; the inspect command reports it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cascadeseg.cli import main
from cascadeseg.data.case import Case
from cascadeseg.data.layouts import discover_cases, read_case
from cascadeseg.data.nifti import load_nifti, save_nifti
from cascadeseg.data.validate import (
    as_volume,
    check_channel_count,
    check_same_geometry,
    validate_case,
)
from cascadeseg.data.writers import write_case
from cascadeseg.errors import InputError
from toy import make_tiny_case


def _brats(root: Path, n: int = 1, layout: str = "brats2021") -> list[Path]:
    return [
        write_case(make_tiny_case(seed=i, case_id=f"case_{i:03d}"), root, layout) for i in range(n)
    ]


def _read_error(root: Path) -> str:
    with pytest.raises(InputError) as exc:
        read_case(discover_cases(root)[0])
    message = str(exc.value)
    assert "\n" not in message
    return message


def _rewrite(path: Path, change) -> None:
    data, affine, _ = load_nifti(path)
    data, affine = change(data.copy(), affine.copy())
    path.unlink()
    save_nifti(data, affine, None, path)


# ---------------------------------------------------------------------------------------------
# files


def test_missing_modality_file(tmp_path):
    (folder,) = _brats(tmp_path)
    (folder / "case_000_t1ce.nii.gz").unlink()
    message = _read_error(tmp_path)
    assert message.startswith(str(folder))
    assert "missing t1ce file(s) (expected case_000_t1ce.nii.gz)" in message


def test_duplicated_modality_file(tmp_path):
    (folder,) = _brats(tmp_path)
    data, affine, _ = load_nifti(folder / "case_000_flair.nii.gz")
    save_nifti(data, affine, None, folder / "case_000_flair.nii")
    message = _read_error(tmp_path)
    assert message == (
        f"{folder}: duplicated flair files: case_000_flair.nii, case_000_flair.nii.gz"
    )


def test_two_candidate_segmentations(tmp_path):
    (folder,) = _brats(tmp_path)
    seg = folder / "case_000_seg.nii.gz"
    seg.rename(folder / "A_Segm.nii.gz")
    (folder / "B_Segm.nii.gz").write_bytes((folder / "A_Segm.nii.gz").read_bytes())
    assert "several possible segmentations: A_Segm.nii.gz, B_Segm.nii.gz" in _read_error(tmp_path)


def test_modalities_of_different_shapes(tmp_path):
    (folder,) = _brats(tmp_path)
    t2 = folder / "case_000_t2.nii.gz"
    _rewrite(t2, lambda d, a: (d[:, :, :20], a))
    assert _read_error(tmp_path) == (
        f"{t2}: image shape (32, 32, 20) differs from (32, 32, 24) of case_000_flair.nii.gz"
    )


def test_modalities_of_different_affines(tmp_path):
    (folder,) = _brats(tmp_path)
    t1 = folder / "case_000_t1.nii.gz"

    def shift(data, affine):
        affine[0, 3] += 0.5
        return data, affine

    _rewrite(t1, shift)
    message = _read_error(tmp_path)
    assert message.startswith(
        f"{t1}: image affine differs from that of case_000_flair.nii.gz by 0.5 mm"
    )


def test_affine_differences_within_tolerance_are_accepted(tmp_path):
    (folder,) = _brats(tmp_path)

    def nudge(data, affine):
        affine[0, 3] += 1e-4
        return data, affine

    _rewrite(folder / "case_000_t1.nii.gz", nudge)
    assert read_case(discover_cases(tmp_path)[0]).image.shape == (4, 32, 32, 24)


def test_non_finite_voxels(tmp_path):
    (folder,) = _brats(tmp_path)
    t1ce = folder / "case_000_t1ce.nii.gz"

    def poison(data, affine):
        data[1, 2, 3] = np.nan
        data[4, 5, 6] = np.inf
        return data, affine

    _rewrite(t1ce, poison)
    assert _read_error(tmp_path) == f"{t1ce}: 2 non-finite voxels (NaN or infinity)"


def test_all_zero_modality(tmp_path):
    (folder,) = _brats(tmp_path)
    flair = folder / "case_000_flair.nii.gz"
    _rewrite(flair, lambda d, a: (np.zeros_like(d), a))
    assert _read_error(tmp_path) == f"{flair}: modality is empty (every voxel is zero)"


def test_4d_file_with_wrong_channel_count_msd(tmp_path):
    write_case(make_tiny_case(case_id="case_000"), tmp_path, "msd")
    image = tmp_path / "imagesTr" / "case_000.nii.gz"
    _rewrite(image, lambda d, a: (d[..., :3], a))
    assert _read_error(tmp_path) == (
        f"{image}: 4D image has 3 channels, expected 4 (FLAIR, T1, T1ce, T2)"
    )


def test_4d_file_where_a_modality_was_expected(tmp_path):
    (folder,) = _brats(tmp_path)
    t2 = folder / "case_000_t2.nii.gz"
    _rewrite(t2, lambda d, a: (np.stack([d, d], axis=-1), a))
    assert _read_error(tmp_path) == (
        f"{t2}: 4D file with 2 channels where one 3D image was expected"
    )


def test_trailing_singleton_axis_is_accepted(tmp_path):
    (folder,) = _brats(tmp_path)
    _rewrite(folder / "case_000_t2.nii.gz", lambda d, a: (d[..., None], a))
    assert read_case(discover_cases(tmp_path)[0]).image.shape == (4, 32, 32, 24)


def test_nnunet_extra_channel_file(tmp_path):
    write_case(make_tiny_case(case_id="case_000"), tmp_path, "nnunet")
    source = tmp_path / "imagesTr" / "case_000_0000.nii.gz"
    extra = tmp_path / "imagesTr" / "case_000_0004.nii.gz"
    extra.write_bytes(source.read_bytes())
    message = _read_error(tmp_path)
    assert message.startswith(f"{extra}: channel 0004 is not listed in dataset.json")


def test_nnunet_missing_channel_file(tmp_path):
    write_case(make_tiny_case(case_id="case_000"), tmp_path, "nnunet")
    (tmp_path / "imagesTr" / "case_000_0002.nii.gz").unlink()
    message = _read_error(tmp_path)
    assert message == f"{tmp_path / 'imagesTr'}: case case_000 is missing t2 (case_000_0002.nii.gz)"


def test_label_values_outside_the_convention(tmp_path):
    (folder,) = _brats(tmp_path)
    seg = folder / "case_000_seg.nii.gz"

    def add_three(data, affine):
        data[0, 0, 0] = 3  # BraTS 2017-2021 labels have no 3
        return data, affine

    _rewrite(seg, add_three)
    assert _read_error(tmp_path) == (
        f"{seg}: label values [3] are not in the brats2021 convention (allowed: [0, 1, 2, 4])"
    )


def test_label_shape_differs_from_image(tmp_path):
    (folder,) = _brats(tmp_path)
    seg = folder / "case_000_seg.nii.gz"
    _rewrite(seg, lambda d, a: (d[:30], a))
    assert _read_error(tmp_path) == (
        f"{seg}: label map shape (30, 32, 24) differs from (32, 32, 24) of case_000_flair.nii.gz"
    )


def test_truncated_file_inside_a_case(tmp_path):
    (folder,) = _brats(tmp_path)
    t1 = folder / "case_000_t1.nii.gz"
    t1.write_bytes(t1.read_bytes()[:-100])
    assert _read_error(tmp_path) == f"{t1}: file is truncated (compressed data ends early)"


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no cases found"):
        discover_cases(tmp_path)


def test_msd_images_without_cases(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {}}))
    with pytest.raises(InputError, match="no cases found"):
        discover_cases(tmp_path)


# ---------------------------------------------------------------------------------------------
# in-memory checks


def test_validate_case_in_memory_problems():
    case = make_tiny_case()
    validate_case(case)  # a good case passes
    bad_label = case.with_label(np.full_like(case.label, 5))
    with pytest.raises(InputError, match=r"toy_000: internal label values \[5\] outside 0-3"):
        validate_case(bad_label)
    with pytest.raises(InputError, match=r"label shape \(32, 32, 23\) differs"):
        validate_case(case.with_label(case.label[..., :-1]))
    three = Case(case.image[:3], case.label, case.meta)
    with pytest.raises(InputError, match=r"src/x: image of shape \(3, 32, 32, 24\)"):
        validate_case(three, source="src/x")
    moved = replace(case, meta=replace(case.meta, shape=(32, 32, 25)))
    with pytest.raises(InputError, match=r"differs from meta\.shape"):
        validate_case(moved)
    image = case.image.copy()
    image[2] = 0
    with pytest.raises(InputError, match=r"toy_000 \(t1ce\): modality is empty"):
        validate_case(replace(case, image=image))


def test_geometry_helpers():
    eye = np.eye(4)
    check_same_geometry("a.nii", (2, 2, 2), eye, "b.nii", (2, 2, 2), eye + 9e-4)
    with pytest.raises(
        InputError, match=r"b\.nii: image affine differs from that of a\.nii by 0\.002"
    ):
        check_same_geometry("a.nii", (2, 2, 2), eye, "b.nii", (2, 2, 2), eye + 2e-3)
    nan = eye.copy()
    nan[0, 0] = np.nan
    with pytest.raises(InputError, match=r"b\.nii: affine is not finite") as exc:
        check_same_geometry("a.nii", (2, 2, 2), eye, "b.nii", (2, 2, 2), nan)
    assert "nan mm" not in str(exc.value)
    with pytest.raises(InputError, match=r"x.nii: 3D image of shape \(2, 2, 2\), expected a 4D"):
        check_channel_count("x.nii", (2, 2, 2))
    assert as_volume(np.zeros((2, 3, 4, 1)), "x.nii").shape == (2, 3, 4)
    with pytest.raises(InputError, match="2D image"):
        as_volume(np.zeros((2, 3)), "x.nii")


# ---------------------------------------------------------------------------------------------
# cascadeseg inspect


def test_inspect_good_dataset(tmp_path, capsys):
    _brats(tmp_path, n=2, layout="brats2023")
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tmp_path}: brats2023 layout, 2 case(s), labels brats2023"
    rows = [line for line in out if line.startswith("case_")]
    assert len(rows) == 2 and all(line.endswith("ok") for line in rows)
    case = make_tiny_case(seed=0, case_id="case_000")
    tumour_ml = int((case.label > 0).sum()) / 1000.0
    assert rows[0].split()[1:5] == ["32x32x24", "1.00x1.00x1.00", "0,1,2,3", f"{tumour_ml:.1f}"]
    assert out[-1] == "2 case(s): 2 ok, 0 bad"


def test_inspect_reports_each_bad_case_in_one_line(tmp_path, capsys):
    folders = _brats(tmp_path, n=3)
    flair = folders[1] / "case_001_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:200])
    assert main(["inspect", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    bad = [line for line in out if "BAD" in line]
    assert bad == [f"case_001      BAD: {flair}: file is truncated (compressed data ends early)"]
    assert out[-1] == "3 case(s): 2 ok, 1 bad"


def test_inspect_empty_folder_exits_2_with_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cascadeseg inspect: error: {tmp_path}: no cases found (the folder is empty)"]


def test_inspect_with_label_override(tmp_path, capsys):
    (folder,) = _brats(tmp_path, layout="brats2023")
    seg = folder / "case_000-seg.nii.gz"

    def add_cavity(data, affine):
        data[0, 0, 0] = 4
        return data, affine

    _rewrite(seg, add_cavity)
    assert main(["inspect", str(tmp_path)]) == 1
    assert main(["inspect", str(tmp_path), "--labels", "brats2024", "--layout", "brats2023"]) == 0
    assert "labels brats2024" in capsys.readouterr().out
