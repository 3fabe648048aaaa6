"""write_case: file names, channel order, label values and dataset.json of every layout."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cascadeseg.data.labels import ED, ET, NCR
from cascadeseg.data.layouts.base import image_dtype
from cascadeseg.data.nifti import load_nifti
from cascadeseg.data.writers import update_dataset_json, write_case
from toy import make_tiny_case


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture
def case():
    return make_tiny_case(case_id="P1")


def test_brats2021_files_and_labels(tmp_path, case):
    folder = write_case(case, tmp_path, "brats2021")
    assert folder == tmp_path / "P1"
    assert _names(folder) == [f"P1_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")]
    seg = load_nifti(folder / "P1_seg.nii.gz")[0]
    assert seg.dtype == np.uint8
    assert set(seg[case.label == ET].tolist()) == {4}
    assert set(seg[case.label == NCR].tolist()) == {1}
    assert set(seg[case.label == ED].tolist()) == {2}
    np.testing.assert_array_equal(load_nifti(folder / "P1_t1ce.nii.gz")[0], case.image[2])


def test_brats2023_files_and_labels(tmp_path, case):
    folder = write_case(case, tmp_path, "brats2023", compress=False)
    assert _names(folder) == [f"P1-{m}.nii" for m in ("seg", "t1c", "t1n", "t2f", "t2w")]
    seg = load_nifti(folder / "P1-seg.nii")[0]
    np.testing.assert_array_equal(seg, case.label)  # 2023 values equal the internal ones
    np.testing.assert_array_equal(load_nifti(folder / "P1-t2f.nii")[0], case.image[0])
    np.testing.assert_array_equal(load_nifti(folder / "P1-t1n.nii")[0], case.image[1])


def test_msd_4d_image_channel_order_and_labels(tmp_path, case):
    root = write_case(case, tmp_path, "msd")
    assert root == tmp_path
    image, _, _ = load_nifti(tmp_path / "imagesTr" / "P1.nii.gz")
    assert image.shape == (32, 32, 24, 4)
    for channel in range(4):  # Task01 order FLAIR, T1w, T1gd, T2w equals ours
        np.testing.assert_array_equal(image[..., channel], case.image[channel])
    seg = load_nifti(tmp_path / "labelsTr" / "P1.nii.gz")[0]
    assert set(seg[case.label == ED].tolist()) == {1}
    assert set(seg[case.label == NCR].tolist()) == {2}
    assert set(seg[case.label == ET].tolist()) == {3}
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["labels"]["1"] == "edema"
    assert meta["training"] == [{"image": "./imagesTr/P1.nii.gz", "label": "./labelsTr/P1.nii.gz"}]


def test_msd_dataset_json_grows_and_keeps_other_fields(tmp_path):
    for i in range(3):
        write_case(make_tiny_case(seed=i, case_id=f"BRATS_{i:03d}"), tmp_path, "msd")
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["description"] = "my copy"
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    unlabelled = make_tiny_case(seed=9, case_id="BRATS_900").with_label(None)
    write_case(unlabelled, tmp_path, "msd")
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["numTest"] == 1
    assert [t["image"] for t in meta["training"]] == [
        f"./imagesTr/BRATS_{i:03d}.nii.gz" for i in range(3)
    ]
    assert meta["test"] == ["./imagesTs/BRATS_900.nii.gz"]
    assert meta["description"] == "my copy"
    assert (tmp_path / "imagesTs" / "BRATS_900.nii.gz").is_file()


def test_nnunet_channels_labels_and_dataset_json(tmp_path, case):
    write_case(case, tmp_path, "nnunet")
    write_case(make_tiny_case(seed=1, case_id="P2"), tmp_path, "nnunet")
    assert _names(tmp_path / "imagesTr") == [
        f"{c}_{i:04d}.nii.gz" for c in ("P1", "P2") for i in range(4)
    ]
    # nnU-Net's BraTS conversion order: T1, T1ce, T2, FLAIR.
    for index, channel in enumerate((1, 2, 3, 0)):
        stored = load_nifti(tmp_path / "imagesTr" / f"P1_{index:04d}.nii.gz")[0]
        np.testing.assert_array_equal(stored, case.image[channel])
    seg = load_nifti(tmp_path / "labelsTr" / "P1.nii.gz")[0]
    assert set(seg[case.label == ED].tolist()) == {1}
    assert set(seg[case.label == NCR].tolist()) == {2}
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["labels"]["tumor core"] == [2, 3]
    assert meta["regions_class_order"] == [1, 2, 3]
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"


def test_images_are_int16_when_integral(tmp_path, case):
    rounded = case.image.round()
    assert image_dtype(rounded) is np.int16
    assert image_dtype(case.image) is np.float32
    assert image_dtype(np.array([0.0, 40000.0])) is np.float32  # beyond int16
    assert image_dtype(np.array([0.0, np.nan])) is np.float32
    assert image_dtype(np.array([-3, 7], dtype=np.int32)) is np.int16
    write_case(case.__class__(rounded, case.label, case.meta), tmp_path / "a", "brats2021")
    assert nib.load(tmp_path / "a" / "P1" / "P1_flair.nii.gz").get_data_dtype() == np.int16
    write_case(case, tmp_path / "b", "brats2021")
    assert nib.load(tmp_path / "b" / "P1" / "P1_flair.nii.gz").get_data_dtype() == np.float32


def test_written_geometry_matches_the_case(tmp_path):
    case = make_tiny_case(case_id="S", spacing=(0.9, 1.0, 3.0))
    folder = write_case(case, tmp_path, "brats2021")
    _, affine, header = load_nifti(folder / "S_t2.nii.gz")
    np.testing.assert_allclose(affine, case.meta.affine)
    np.testing.assert_allclose(header.get_zooms(), (0.9, 1.0, 3.0), rtol=1e-6)


def test_case_without_label_writes_no_seg(tmp_path, case):
    folder = write_case(case.with_label(None), tmp_path, "brats2021")
    assert "P1_seg.nii.gz" not in _names(folder)


def test_unknown_layout(tmp_path, case):
    with pytest.raises(ValueError, match="cannot write layout 'files'"):
        write_case(case, tmp_path, "files")
    with pytest.raises(ValueError, match=r"no dataset\.json"):
        update_dataset_json(tmp_path, "brats2021")
