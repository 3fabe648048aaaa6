"""File names to case ids: the official BraTS evaluation's folders and other namings meet."""

from __future__ import annotations

import pytest
from quiet import evaluate_quietly

from cascadeseg.cli import main
from cascadeseg.errors import InputError
from cascadeseg.evaluation.matching import (
    case_id_from_label_file,
    find_predictions,
    find_references,
    is_auxiliary_output,
)


def _ids(n: int, pattern: str = "BraTS-GLI-{:05d}-000") -> list[str]:
    return [pattern.format(i) for i in range(n)]


def _evaluate(root, **kwargs):
    return evaluate_quietly(root / "pred", root / "ref", root / "out", **kwargs)


@pytest.mark.parametrize(
    ("name", "case_id"),
    [
        ("BraTS-GLI-00000-000-seg.nii.gz", "BraTS-GLI-00000-000"),
        ("BraTS-GLI-00000-000.nii.gz", "BraTS-GLI-00000-000"),
        ("BraTS-MET-00123-001-SEG.nii", "BraTS-MET-00123-001"),
        ("BraTS2021_00000_seg.nii.gz", "BraTS2021_00000"),
        ("BraTS2021_00000.nii.gz", "BraTS2021_00000"),
        ("BraTS20_Validation_001_seg.nii", "BraTS20_Validation_001"),
        ("BRATS_001.nii.gz", "BRATS_001"),
        ("patient7.label.nii.gz", "patient7"),
        ("case-12_gt.nii.gz", "case-12"),
        ("Brats18_TCIA01_390_1_pred.nii.gz", "Brats18_TCIA01_390_1"),
        ("seg.nii.gz", "seg"),  # only a tag: its case folder names the case
        ("x_segment.nii.gz", "x_segment"),  # not a tag: part of the id
        ("a_seg_seg.nii.gz", "a_seg"),  # one tag at most
    ],
)
def test_case_id_from_label_file(name, case_id):
    assert case_id_from_label_file(name) == case_id


def test_auxiliary_outputs_of_predict_are_recognised():
    assert is_auxiliary_output("BraTS-GLI-00000-000_probabilities.nii.gz")
    assert is_auxiliary_output("BraTS2021_00000_uncertainty.nii")
    assert not is_auxiliary_output("BraTS2021_00000.nii.gz")


def test_official_brats2023_folders(tmp_path, write_label, capsys):
    """References <id>-seg.nii.gz in one folder, predictions <id>.nii.gz in another."""
    ids = _ids(3)
    for case_id in ids:
        write_label(tmp_path / "ref" / f"{case_id}-seg.nii.gz")
        write_label(tmp_path / "pred" / f"{case_id}.nii.gz")
    result = _evaluate(tmp_path)
    assert [r["case"] for r in result.rows] == ids
    assert [r["status"] for r in result.rows] == ["ok"] * 3
    assert [r["dice_wt"] for r in result.rows] == [1.0] * 3
    assert result.summary["status"] == "ok" and result.summary["warnings"] == []
    code = main(
        ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out",
         str(tmp_path / "cli"), "--workers", "1", "--no-progress", "--no-report"]
    )  # fmt: skip
    assert code == 0
    assert "WARNING" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("ref_name", "pred_name"),
    [
        ("{}_seg.nii.gz", "{}.nii.gz"),  # flat BraTS 2017-2021 references
        ("{}.nii", "{}.nii.gz"),
        ("{}.nii.gz", "{}-seg.nii.gz"),  # predictions named like references
        ("{}-seg.nii.gz", "{}_seg.nii.gz"),
        ("{0}/{0}-seg.nii.gz", "{}.nii.gz"),  # one case folder per reference
        ("{0}/{0}_seg.nii", "{}.nii.gz"),
        ("{}/seg.nii.gz", "{}.nii.gz"),
        ("HGG/{0}/{0}_seg.nii.gz", "{}.nii.gz"),  # grouped case folders (BraTS 2017-2019)
    ],
)
def test_reference_and_prediction_namings_meet(tmp_path, write_label, ref_name, pred_name):
    ids = _ids(2, "BraTS2021_{:05d}")
    for case_id in ids:
        write_label(tmp_path / "ref" / ref_name.format(case_id), et=4)
        write_label(tmp_path / "pred" / pred_name.format(case_id), et=4)
    result = _evaluate(tmp_path)
    assert [(r["case"], r["status"], r["dice_et"]) for r in result.rows] == [
        (case_id, "ok", 1.0) for case_id in ids
    ]


def test_nested_case_folders_keep_their_images_out(tmp_path, write_label):
    """A case folder with only some images and the segmentation: the label map is the seg."""
    write_label(tmp_path / "ref" / "caseA" / "caseA-seg.nii.gz")
    write_label(tmp_path / "ref" / "caseA" / "caseA-t2f.nii.gz", empty=True)
    refs = find_references(tmp_path / "ref")
    assert [(r.case_id, r.seg.name) for r in refs] == [("caseA", "caseA-seg.nii.gz")]


def test_dataset_layout_references_with_seg_named_predictions(tmp_path, write_label):
    """A BraTS 2021 dataset (images + seg per case folder) against <id>_seg predictions."""
    for case_id in _ids(2, "BraTS2021_{:05d}"):
        folder = tmp_path / "ref" / case_id
        for key in ("flair", "t1", "t1ce", "t2"):
            write_label(folder / f"{case_id}_{key}.nii.gz", offset=key == "t1")
        write_label(folder / f"{case_id}_seg.nii.gz", et=4)
        write_label(tmp_path / "pred" / f"{case_id}_seg.nii.gz", et=4)
    result = _evaluate(tmp_path)
    assert {r["status"] for r in result.rows} == {"ok"}
    assert result.rows[0]["ref_convention"] == "brats2021"
    assert result.summary["source"]["ref_layout"] == "brats2021"


def test_predict_outputs_are_not_unmatched_predictions(tmp_path, write_label):
    case_id = "BraTS-GLI-00007-000"
    write_label(tmp_path / "ref" / f"{case_id}-seg.nii.gz")
    write_label(tmp_path / "pred" / f"{case_id}.nii.gz")
    write_label(tmp_path / "pred" / f"{case_id}_probabilities.nii.gz")
    write_label(tmp_path / "pred" / f"{case_id}_uncertainty.nii.gz")
    (tmp_path / "pred" / f"{case_id}.json").write_text("{}")
    assert list(find_predictions(tmp_path / "pred")) == [case_id]
    result = _evaluate(tmp_path)
    assert result.summary["unmatched_predictions"] == []
    assert result.summary["warnings"] == []


def test_two_files_for_one_case_is_an_input_error(tmp_path, write_label, capsys):
    write_label(tmp_path / "ref" / "c1-seg.nii.gz")
    write_label(tmp_path / "pred" / "c1.nii.gz")
    write_label(tmp_path / "pred" / "c1_seg.nii.gz")
    with pytest.raises(InputError, match="two label maps for case 'c1'"):
        find_predictions(tmp_path / "pred")
    code = main(
        ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out",
         str(tmp_path / "out"), "--no-progress"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c1.nii.gz, c1_seg.nii.gz" in err[0]


def test_prediction_path_that_is_a_file(tmp_path, write_label):
    path = write_label(tmp_path / "p.nii.gz")
    with pytest.raises(InputError, match="is not a folder"):
        find_predictions(path)


def test_two_label_maps_in_one_case_folder(tmp_path, write_label):
    write_label(tmp_path / "ref" / "c1" / "c1-seg.nii.gz")
    write_label(tmp_path / "ref" / "c1" / "seg.nii.gz")
    with pytest.raises(InputError, match="two label maps for case 'c1'"):
        find_references(tmp_path / "ref")
