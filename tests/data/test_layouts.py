"""Readers of every layout: detection, discovery, channel order, labels, and write_label_map."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cascadeseg.data.case import Case
from cascadeseg.data.labels import ED, ET, NCR
from cascadeseg.data.layouts import (
    LAYOUTS,
    CaseRef,
    channels_from_dataset_json,
    convention_from_dataset_json,
    detect_layout,
    discover_cases,
    load_dataset,
    modality_from_name,
    read_case,
    read_files,
    write_label_map,
)
from cascadeseg.data.nifti import load_nifti, save_nifti
from cascadeseg.data.writers import write_case
from cascadeseg.errors import InputError
from toy import make_tiny_case

WRITABLE = ["brats2021", "brats2023", "msd", "nnunet"]
EXPECTED_CONVENTION = {
    "brats2021": "brats2021",
    "brats2023": "brats2023",
    "msd": "msd",
    "nnunet": "nnunet_brats",
}
# Source values of internal (background, NCR, ED, ET) in each layout's convention.
SOURCE_VALUES = {
    "brats2021": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
    "msd": (0, 2, 1, 3),
    "nnunet": (0, 2, 1, 3),
}


def _cases(n: int = 2) -> list[Case]:
    return [make_tiny_case(seed=i, case_id=f"case_{i:03d}") for i in range(n)]


def _dataset(root: Path, layout: str, n: int = 2) -> list[Case]:
    cases = _cases(n)
    for case in cases:
        write_case(case, root, layout)
    return cases


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("layout", WRITABLE)
def test_write_then_read_gives_back_the_case(tmp_path, layout):
    cases = _dataset(tmp_path, layout)
    assert detect_layout(tmp_path) == layout
    refs = discover_cases(tmp_path)
    assert [r.case_id for r in refs] == ["case_000", "case_001"]
    assert all(r.layout == layout for r in refs)
    assert all(r.label_convention == EXPECTED_CONVENTION[layout] for r in refs)
    for ref, case in zip(refs, cases):
        got = read_case(ref)
        assert got.image.dtype == np.float32 and got.image.shape == (4, 32, 32, 24)
        np.testing.assert_array_equal(got.image, case.image)  # FLAIR, T1, T1ce, T2 order
        assert got.label is not None and got.label.dtype == np.uint8
        np.testing.assert_array_equal(got.label, case.label)
        np.testing.assert_allclose(got.meta.affine, case.meta.affine)
        assert got.meta.spacing == (1.0, 1.0, 1.0)
        assert got.meta.shape == (32, 32, 24)
        assert got.meta.source_layout == layout
        assert got.meta.label_convention == EXPECTED_CONVENTION[layout]
        assert got.meta.header is not None


@pytest.mark.parametrize("layout", WRITABLE)
def test_write_label_map_restores_source_values_and_header(tmp_path, layout):
    (case,) = _dataset(tmp_path / "data", layout, n=1)
    got = read_case(discover_cases(tmp_path / "data")[0])
    out = write_label_map(got.label, got.meta, tmp_path / "pred")
    assert out == tmp_path / "pred" / "case_000.nii.gz"
    values, affine, header = load_nifti(out)
    assert values.dtype == np.uint8
    # Each internal class comes back as the layout's own value, voxel for voxel.
    expected = np.asarray(SOURCE_VALUES[layout], dtype=np.uint8)[case.label]
    np.testing.assert_array_equal(values, expected)
    assert sorted(np.unique(values).tolist()) == sorted(SOURCE_VALUES[layout])
    np.testing.assert_array_equal(affine, got.meta.affine)
    source = got.meta.header
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "xyzt_units"):
        assert header[key] == source[key], key
    for key in ("qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z"):
        np.testing.assert_array_equal(header[key], source[key])
    np.testing.assert_array_equal(header["pixdim"][1:4], source["pixdim"][1:4])
    np.testing.assert_array_equal(header["dim"][1:4], source["dim"][1:4])
    assert header["dim"][0] == 3  # a 3D label map even when the source image was 4D (MSD)


def test_write_label_map_in_a_named_convention_and_without_header(tmp_path):
    case = make_tiny_case()  # in memory: no header, convention brats2021
    path = write_label_map(case.label, case.meta, tmp_path, convention="msd")
    values, affine, header = load_nifti(path)
    assert values[case.label == ED].tolist() == [1] * int((case.label == ED).sum())
    assert values[case.label == NCR].tolist() == [2] * int((case.label == NCR).sum())
    assert set(values[case.label == ET].tolist()) == {3}
    np.testing.assert_array_equal(affine, case.meta.affine)
    assert int(header["sform_code"]) == 1
    path = write_label_map(case.label, case.meta, tmp_path, dtype=np.int16)
    assert load_nifti(path)[0].dtype == np.int16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy_000.nii.gz"]  # no temp files


def test_write_label_map_resets_display_range_and_keeps_meta_header(tmp_path):
    _dataset(tmp_path / "data", "brats2021", n=1)
    got = read_case(discover_cases(tmp_path / "data")[0])
    got.meta.header["cal_max"] = 2000.0
    path = write_label_map(got.label, got.meta, tmp_path / "pred")
    assert float(load_nifti(path)[2]["cal_max"]) == 0.0
    assert float(got.meta.header["cal_max"]) == 2000.0
    assert got.meta.header.get_data_dtype() == np.float32  # toy images are not integral


def test_write_label_map_rejects_wrong_shape(tmp_path):
    case = make_tiny_case()
    with pytest.raises(ValueError, match="shape"):
        write_label_map(case.label[:-1], case.meta, tmp_path)


def test_integral_images_are_stored_as_int16_and_read_back(tmp_path):
    case = make_tiny_case(case_id="int")
    case = replace(case, image=np.rint(case.image))
    folder = write_case(case, tmp_path, "brats2021")
    assert nib.load(folder / "int_t1ce.nii.gz").get_data_dtype() == np.int16
    got = read_case(discover_cases(tmp_path)[0])
    np.testing.assert_array_equal(got.image, case.image)


def test_uncompressed_nii_files(tmp_path):
    (case,) = _cases(1)
    write_case(case, tmp_path, "brats2021", compress=False)
    assert (tmp_path / "case_000" / "case_000_flair.nii").is_file()
    assert detect_layout(tmp_path) == "brats2021"
    np.testing.assert_array_equal(read_case(discover_cases(tmp_path)[0]).label, case.label)


def test_non_isotropic_spacing(tmp_path):
    case = make_tiny_case(spacing=(1.0, 1.2, 2.5))
    write_case(case, tmp_path, "brats2023")
    got = read_case(discover_cases(tmp_path)[0])
    np.testing.assert_allclose(got.meta.spacing, (1.0, 1.2, 2.5), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# BraTS folders


def test_hgg_lgg_nesting(tmp_path):
    cases = _cases(3)
    write_case(cases[0], tmp_path / "HGG", "brats2021")
    write_case(cases[1], tmp_path / "HGG", "brats2021")
    write_case(cases[2], tmp_path / "LGG", "brats2021")
    (tmp_path / "name_mapping.csv").write_text("BraTS_2019_subject_ID\n")
    assert detect_layout(tmp_path) == "brats2021"
    refs = discover_cases(tmp_path)
    assert [(r.case_id, r.extra["grade"]) for r in refs] == [
        ("case_000", "HGG"),
        ("case_001", "HGG"),
        ("case_002", "LGG"),
    ]
    assert read_case(refs[2]).meta.extra == {"grade": "LGG"}


def test_same_case_id_twice_is_an_error(tmp_path):
    (case,) = _cases(1)
    write_case(case, tmp_path / "HGG", "brats2021")
    write_case(case, tmp_path / "LGG", "brats2021")
    with pytest.raises(InputError, match="case_000 appears twice"):
        discover_cases(tmp_path)


def test_a_single_case_folder_is_a_dataset(tmp_path):
    _dataset(tmp_path, "brats2023")
    refs = discover_cases(tmp_path / "case_001")
    assert [r.case_id for r in refs] == ["case_001"]
    assert detect_layout(tmp_path / "case_001") == "brats2023"


@pytest.mark.parametrize("segm_name", ["W39_1998.09.19_Segm.nii", "W39_1998.09.19_Segm.nii.gz"])
def test_brats2020_case_355_segmentation_name(tmp_path, segm_name):
    (case,) = _cases(1)
    folder = write_case(case, tmp_path, "brats2021", compress=False)
    seg, affine, _ = load_nifti(folder / "case_000_seg.nii")
    (folder / "case_000_seg.nii").unlink()
    save_nifti(seg, affine, None, folder / segm_name)
    ref = discover_cases(tmp_path)[0]
    assert ref.files["seg"].name == segm_name
    np.testing.assert_array_equal(read_case(ref).label, case.label)


def test_case_without_segmentation_reads_without_label(tmp_path):
    (case,) = _cases(1)
    folder = write_case(case, tmp_path, "brats2021")
    (folder / "case_000_seg.nii.gz").unlink()
    got = read_case(discover_cases(tmp_path)[0])
    assert got.label is None
    np.testing.assert_array_equal(got.image, case.image)


def test_brats2024_override_maps_resection_cavity_to_background(tmp_path):
    (case,) = _cases(1)
    folder = write_case(case, tmp_path, "brats2023")
    seg_path = folder / "case_000-seg.nii.gz"
    seg, affine, _ = load_nifti(seg_path)
    seg[0, 0, 0:3] = 4  # resection cavity, outside the tumour
    save_nifti(seg, affine, None, seg_path)
    with pytest.raises(InputError, match=r"case_000-seg.nii.gz: label values \[4\]"):
        read_case(discover_cases(tmp_path)[0])
    ref = discover_cases(tmp_path, label_convention="brats2024")[0]
    assert ref.label_convention == "brats2024"
    got = read_case(ref)
    assert got.label[0, 0, 0:3].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(got.label, case.label)


def test_layout_can_be_forced_and_wrong_layout_finds_nothing(tmp_path):
    _dataset(tmp_path, "brats2021")
    assert len(discover_cases(tmp_path, layout="brats2021")) == 2
    with pytest.raises(InputError, match="no cases found"):
        discover_cases(tmp_path, layout="brats2023")
    with pytest.raises(InputError, match="unknown layout"):
        discover_cases(tmp_path, layout="brats2015")
    with pytest.raises(InputError, match="read_files"):
        discover_cases(tmp_path, layout="files")
    with pytest.raises(InputError, match="unknown label convention"):
        discover_cases(tmp_path, label_convention="brats1999")


def test_mixed_brats_years_need_an_explicit_layout(tmp_path):
    cases = _cases(2)
    write_case(cases[0], tmp_path, "brats2021")
    write_case(cases[1], tmp_path, "brats2023")
    with pytest.raises(InputError, match="mixes BraTS 2017-2021"):
        detect_layout(tmp_path)
    assert [r.case_id for r in discover_cases(tmp_path, layout="brats2023")] == ["case_001"]


# ---------------------------------------------------------------------------------------------
# MSD and nnU-Net: channel order and labels from dataset.json


def test_nnunet_channels_are_reordered_from_dataset_json(tmp_path):
    (case,) = _cases(1)
    # A dataset that stores the channels as FLAIR, T1ce, T2, T1 (v1 "modality" key, v1 labels).
    order = {"0": "Flair", "1": "T1-Gd", "2": "t2w", "3": "native"}
    index_of = {"flair": 0, "t1ce": 1, "t2": 2, "t1": 3}
    for channel, modality in enumerate(("flair", "t1", "t1ce", "t2")):
        path = tmp_path / "imagesTr" / f"case_000_{index_of[modality]:04d}.nii.gz"
        save_nifti(case.image[channel], case.meta.affine, None, path)
    seg = np.asarray([0, 2, 1, 3], np.uint8)[case.label]  # nnU-Net BraTS: 1 edema, 2 NCR
    save_nifti(seg, case.meta.affine, None, tmp_path / "labelsTr" / "case_000.nii.gz")
    labels = {"0": "background", "1": "edema", "2": "non-enhancing", "3": "enhancing"}
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": order, "labels": labels}))
    assert detect_layout(tmp_path) == "nnunet"
    ref = discover_cases(tmp_path)[0]
    assert ref.files["t1"].name == "case_000_0003.nii.gz"
    assert ref.label_convention == "nnunet_brats"
    got = read_case(ref)
    np.testing.assert_array_equal(got.image, case.image)
    np.testing.assert_array_equal(got.label, case.label)


def test_msd_channel_order_from_dataset_json_and_hidden_files(tmp_path):
    (case,) = _cases(1)
    write_case(case, tmp_path, "msd")
    # Rewrite the 4D file with the channels stored as T2, T1ce, T1, FLAIR and say so.
    stored = np.stack([case.image[3], case.image[2], case.image[1], case.image[0]], axis=-1)
    save_nifti(stored, case.meta.affine, None, tmp_path / "imagesTr" / "case_000.nii.gz")
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["modality"] = {"0": "T2w", "1": "T1Gd", "2": "T1w", "3": "FLAIR"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    # The MSD archive ships macOS "._" files next to the images: they are not cases.
    (tmp_path / "imagesTr" / "._case_000.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    refs = discover_cases(tmp_path)
    assert [r.case_id for r in refs] == ["case_000"]
    assert refs[0].extra["channels"] == {"t2": 0, "t1ce": 1, "t1": 2, "flair": 3}
    got = read_case(refs[0])
    np.testing.assert_array_equal(got.image, case.image)
    np.testing.assert_array_equal(got.label, case.label)


def test_dataset_json_is_required(tmp_path):
    _dataset(tmp_path, "msd")
    (tmp_path / "dataset.json").unlink()
    with pytest.raises(InputError, match=r"dataset.json: file not found"):
        discover_cases(tmp_path)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (
            {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "msd",
        ),
        ({"background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3}, "msd"),
        (
            {
                "background": 0,
                "whole tumor": [1, 2, 3],
                "tumor core": [2, 3],
                "enhancing tumor": [3],
            },
            "msd",
        ),
        (
            {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3},
            "msd",
        ),
        ({"background": 0, "NCR": 1, "ED": 2, "ET": 4}, "brats2021"),
        ({"background": 0, "NETC": 1, "SNFH": 2, "ET": 3}, "brats2023"),
        ({"background": 0, "whole tumor": [1, 2, 4], "tumor core": [1, 4], "ET": [4]}, "brats2021"),
    ],
)
def test_label_convention_from_dataset_json(labels, expected):
    assert convention_from_dataset_json({"labels": labels}, "dataset.json", ("msd",)) == expected


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_dataset_json_with_byte_order_mark_and_text_label_values(tmp_path, layout):
    cases = _dataset(tmp_path, layout, n=1)
    path = tmp_path / "dataset.json"
    meta = json.loads(path.read_text())
    if layout == "msd":  # nnU-Net v2 form with its numbers written as text
        meta["labels"] = {"background": "0", "edema": "1", "non-enhancing": "2", "enhancing": "3"}
    else:
        meta["labels"] = {"background": "0", "whole tumor": ["1", "2", "3"], "tumor core": [2, 3],
                          "enhancing tumor": "3"}  # fmt: skip
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(meta).encode("utf-8"))  # as Notepad saves
    refs = discover_cases(tmp_path)
    np.testing.assert_array_equal(read_case(refs[0]).label, cases[0].label)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"0": "1", "1": "2"}, "'labels' maps numbers to numbers"),
        ({"background": "zero", "edema": 1}, "label 'background' has the value \"zero\""),
        ({"background": 0, "edema": -1}, "label 'edema' has the value -1"),
        ({"background": 0, "edema": True}, "label 'edema' has the value true"),
    ],
)
def test_unusable_label_values_get_one_plain_line(labels, message):
    with pytest.raises(InputError) as exc:
        convention_from_dataset_json({"labels": labels}, "data/dataset.json")
    text = str(exc.value)
    assert text.startswith("data/dataset.json: ") and message in text and "\n" not in text


def test_nnunet_prefers_its_own_convention_name():
    labels = {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}
    name = convention_from_dataset_json({"labels": labels}, "d.json", ("nnunet_brats",))
    assert name == "nnunet_brats"


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"0": "background", "1": "liver"}, "'liver'"),
        ({"background": 0, "edema": 1, "necrosis": 2}, "match no known label convention"),
        ({"background": 0, "whole tumor": [1, 2], "tumor core": [1, 2]}, "need WT, TC and ET"),
    ],
)
def test_unusable_dataset_json_labels(labels, message):
    with pytest.raises(InputError, match=message):
        convention_from_dataset_json({"labels": labels}, "dataset.json")


def test_channels_from_dataset_json():
    data = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}}
    assert channels_from_dataset_json(data, "d.json") == {"t1": 0, "t1ce": 1, "t2": 2, "flair": 3}
    with pytest.raises(InputError, match="3 channels listed"):
        channels_from_dataset_json({"modality": {"0": "T1", "1": "T2", "2": "FLAIR"}}, "d.json")
    with pytest.raises(InputError, match="'CT' is not one of"):
        channels_from_dataset_json({"modality": {"0": "CT"}}, "d.json")
    with pytest.raises(InputError, match="both t1"):
        channels_from_dataset_json(
            {"channel_names": {"0": "T1", "1": "t1n", "2": "T2", "3": "FLAIR"}}, "d.json"
        )


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("FLAIR", "flair"),
        ("t2f", "flair"),
        ("T2-FLAIR", "flair"),
        ("t1", "t1"),
        ("T1w", "t1"),
        ("t1n", "t1"),
        ("native", "t1"),
        ("T1ce", "t1ce"),
        ("t1c", "t1ce"),
        ("T1Gd", "t1ce"),
        ("t1-gd", "t1ce"),
        ("contrast", "t1ce"),
        ("T2", "t2"),
        ("t2w", "t2"),
        ("DWI", None),
    ],
)
def test_modality_synonyms(name, modality):
    assert modality_from_name(name) == modality


# ---------------------------------------------------------------------------------------------
# explicit files, convenience, detection errors


def test_read_files_infers_case_id_and_2023_convention(tmp_path):
    (case,) = _cases(1)
    folder = write_case(case, tmp_path, "brats2023")
    names = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    kwargs = {m: folder / f"case_000-{s}.nii.gz" for m, s in names.items()}
    got = read_files(**kwargs, seg=folder / "case_000-seg.nii.gz")
    assert got.case_id == "case_000"
    assert got.meta.source_layout == "files" and got.meta.label_convention == "brats2023"
    np.testing.assert_array_equal(got.image, case.image)
    np.testing.assert_array_equal(got.label, case.label)
    unnamed = read_files(**kwargs, case_id="patient", label_convention="brats2024")
    assert unnamed.case_id == "patient" and unnamed.label is None
    assert unnamed.meta.label_convention == "brats2024"


def test_read_files_2021_names(tmp_path):
    (case,) = _cases(1)
    folder = write_case(case, tmp_path, "brats2021")
    got = read_files(**{m: folder / f"case_000_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")})
    assert got.case_id == "case_000" and got.meta.label_convention == "brats2021"


def test_load_dataset_reads_every_case(tmp_path):
    cases = _dataset(tmp_path, "nnunet", n=3)
    loaded = load_dataset(tmp_path, progress=False)
    assert [c.case_id for c in loaded] == [c.case_id for c in cases]
    np.testing.assert_array_equal(loaded[2].label, cases[2].label)


def test_detect_layout_errors(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        detect_layout(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty: no cases found \(the folder is empty\)"):
        detect_layout(empty)
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "notes.txt").write_text("x")
    (other / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="no BraTS case folders"):
        detect_layout(other)
    (other / "imagesTr").mkdir()
    with pytest.raises(InputError, match=r"imagesTr: no cases found"):
        detect_layout(other)


def test_layouts_table_and_caseref():
    assert set(LAYOUTS) == {"brats2021", "brats2023", "msd", "nnunet", "files"}
    ref = CaseRef("a", {"flair": Path("a.nii.gz")}, "files", "brats2021")
    assert ref.extra == {}
    same = CaseRef("a", {"flair": Path("a.nii.gz")}, "files", "brats2021")
    assert ref == same and len({ref, same}) == 1  # usable as a key (caches, sets)
    with pytest.raises(AttributeError):
        ref.case_id = "b"  # type: ignore[misc]


def test_msd_cases_numbered_like_nnunet_channels_are_still_msd(tmp_path):
    case = make_tiny_case(case_id="BRATS_0001")
    write_case(case, tmp_path, "msd")
    assert detect_layout(tmp_path) == "msd"
    np.testing.assert_array_equal(read_case(discover_cases(tmp_path)[0]).image, case.image)
