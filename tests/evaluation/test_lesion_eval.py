"""Lesion-wise figures in evaluate(): columns, regions per convention, lesions.csv, report, CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from lesion_cases import make_lesion_case
from quiet import evaluate_quietly

from cascadeseg.cli import main
from cascadeseg.data.nifti import save_nifti
from cascadeseg.evaluation.compare import compare
from cascadeseg.evaluation.evaluate import load_evaluation
from cascadeseg.evaluation.lesion_eval import LESIONS_CSV_COLUMNS
from cascadeseg.evaluation.lesions import lesion_matching

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _write_pairs(root, seeds=(0, 1), *, with_rc=False, skip=()):
    """Flat folders of BraTS 2023 (or 2024, with RC = 4) references and predictions."""
    pairs = {}
    for seed in seeds:
        ref, pred = make_lesion_case(seed)
        if with_rc:  # a resection cavity away from the tumours, half predicted
            ref[2:6, 2:6, 2:6] = np.where(ref[2:6, 2:6, 2:6] == 0, 4, ref[2:6, 2:6, 2:6])
            pred[2:6, 2:4, 2:6] = np.where(pred[2:6, 2:4, 2:6] == 0, 4, pred[2:6, 2:4, 2:6])
            ref[ref == 3], pred[pred == 3] = 3, 3  # keep ET so the maps hold 3 and 4
        case = f"BraTS-GLI-{seed:05d}-000"
        save_nifti(ref, AFFINE, None, root / "ref" / f"{case}.nii.gz")
        if case not in skip:
            save_nifti(pred, AFFINE, None, root / "pred" / f"{case}.nii.gz")
        pairs[case] = (ref, pred)
    return pairs


def _run(root, **kwargs):
    return evaluate_quietly(root / "pred", root / "ref", root / "out", **kwargs)


def test_columns_values_and_lesions_csv_for_brats2024_maps(tmp_path):
    pairs = _write_pairs(tmp_path, with_rc=True)
    result = _run(tmp_path, lesion_rules="both")
    header = next(csv.reader((tmp_path / "out" / "metrics.csv").open()))
    lesion_cols = [c for c in header if c.startswith("lesion")]
    assert header.index(lesion_cols[0]) == header.index("vol_et_ref_ml") + 1
    assert header.index("status") == header.index(lesion_cols[-1]) + 1
    for region in ("wt", "tc", "et", "netc", "snfh", "rc"):
        for prefix in ("lesion", "lesion23"):
            assert f"{prefix}_dice_{region}" in header
    for row in result.rows:
        ref, pred = pairs[row["case"]]
        expect = lesion_matching(np.isin(pred, (1, 3)), np.isin(ref, (1, 3)), rules="panoptica")
        assert row["lesion_dice_tc"] == pytest.approx(expect.dice, nan_ok=True)
        assert row["lesion_tp_tc"] == expect.tp
        assert row["lesion_nsd_tc"] == pytest.approx(expect.nsd, nan_ok=True)
        assert "lesion23_nsd_tc" not in row
        expect23 = lesion_matching(
            np.isin(pred, (1, 2, 3)), np.isin(ref, (1, 2, 3)), rules="brats2023"
        )
        assert row["lesion23_dice_wt"] == pytest.approx(expect23.dice)
        assert row["lesion23_fp_wt"] == expect23.fp
        rc = lesion_matching(pred == 4, ref == 4)
        assert (row["lesion_tp_rc"], row["lesion_dice_rc"]) == (rc.tp, pytest.approx(rc.dice))
        # WT is outside the resection cavity
        assert row["lesion_dice_wt"] == pytest.approx(
            lesion_matching(np.isin(pred, (1, 2, 3)), np.isin(ref, (1, 2, 3))).dice, nan_ok=True
        )
    lesions = list(csv.DictReader((tmp_path / "out" / "lesions.csv").open()))
    assert tuple(lesions[0]) == LESIONS_CSV_COLUMNS
    for case, row in ((r["case"], r) for r in result.rows):
        wt_ref = [
            float(les["volume_ml"])
            for les in lesions
            if les["case"] == case
            and les["rules"] == "panoptica"
            and les["region"] == "WT"
            and les["source"] == "reference"
        ]
        assert sum(wt_ref) == pytest.approx(row["vol_wt_ref_ml"], rel=1e-4)
    statuses = {les["status"] for les in lesions}
    assert {"matched", "false_positive"} <= statuses
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    total = sum(r["lesion_tp_wt"] for r in result.rows)
    assert summary["lesions"]["lesion_tp_wt"]["total"] == total
    loaded = load_evaluation(tmp_path / "out")
    assert loaded.rows[0]["lesion23_hd95_et"] == pytest.approx(result.rows[0]["lesion23_hd95_et"])
    assert len(loaded.lesions) == len(lesions)


def test_brats2021_maps_have_the_three_regions_only_and_none_switches_off(tmp_path):
    for seed in (2,):
        ref, pred = make_lesion_case(seed)
        ref21, pred21 = np.where(ref == 3, 4, ref), np.where(pred == 3, 4, pred)
        save_nifti(ref21, AFFINE, None, tmp_path / "ref" / f"BraTS2021_{seed:05d}.nii.gz")
        save_nifti(pred21, AFFINE, None, tmp_path / "pred" / f"BraTS2021_{seed:05d}.nii.gz")
    result = _run(tmp_path)
    cols = {k for k in result.rows[0] if k.startswith("lesion")}
    assert cols == {
        f"lesion_{f}_{r}"
        for f in ("tp", "fp", "fn", "f1", "dice", "hd95", "nsd")
        for r in ("wt", "tc", "et")
    }
    assert (tmp_path / "out" / "lesions.csv").is_file()
    off = evaluate_quietly(
        tmp_path / "pred", tmp_path / "ref", tmp_path / "off", lesion_rules="none"
    )
    assert not any(k.startswith("lesion") for k in off.rows[0])
    assert not (tmp_path / "off" / "lesions.csv").exists()


def test_missing_prediction_counts_every_reference_lesion_as_missed(tmp_path):
    pairs = _write_pairs(tmp_path, seeds=(4, 5), skip={"BraTS-GLI-00004-000"})
    row = next(r for r in _run(tmp_path).rows if r["case"] == "BraTS-GLI-00004-000")
    ref = pairs["BraTS-GLI-00004-000"][0]
    n_ref = lesion_matching(np.zeros_like(ref, bool), ref > 0).fn
    assert row["status"] == "missing"
    assert (row["lesion_tp_wt"], row["lesion_fp_wt"], row["lesion_fn_wt"]) == (0, 0, n_ref)
    assert (row["lesion_dice_wt"], row["lesion_hd95_wt"], row["lesion_f1_wt"]) == (0.0, 373.0, 0.0)


def test_report_compare_and_cli(tmp_path, capsys):
    _write_pairs(tmp_path, seeds=(6, 7))
    code = main(
        [
            "evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
            "--out", str(tmp_path / "a"), "--workers", "1", "--no-progress",
            "--lesion-rules", "brats2023", "--challenge", "MET",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "brats2023 WT" in out and "lesions.csv" in out
    page = (tmp_path / "a" / "report.html").read_text()
    assert "Lesions per case" in page and "lesion23_dice_wt" in page
    rows = load_evaluation(tmp_path / "a").rows
    assert "lesion23_dice_et" in rows[0] and "lesion_dice_et" not in rows[0]
    _run(tmp_path)  # panoptica rules into out/
    result = compare([tmp_path / "a", tmp_path / "out"], tmp_path / "cmp", progress=False)
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "Lesion-wise" in table and "WT Dice (brats2023)" in table and "(panoptica)" in table
    header = next(csv.reader((tmp_path / "cmp" / "table.csv").open()))
    assert {"lesion_dice_wt", "lesion23_dice_wt", "lesion_tp_total_wt"} <= set(header)
    assert math.isnan(result.table[0]["lesion_dice_wt"])  # run "a" has brats2023 columns only
    assert result.table[1]["lesion_dice_wt"] == pytest.approx(
        load_evaluation(tmp_path / "out").summary["lesions"]["lesion_dice_wt"]["mean"]
    )
    bad = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref")]
    assert (
        main(
            [
                *bad,
                "--out",
                str(tmp_path / "b"),
                "--lesion-rules",
                "brats2023",
                "--challenge",
                "XYZ",
            ]
        )
        == 2
    )
