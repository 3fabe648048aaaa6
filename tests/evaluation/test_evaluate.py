"""evaluate(): layouts and label conventions mixed, missing predictions, errors, CSV and JSON."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from quiet import evaluate_quietly

from cascadeseg.cli import main
from cascadeseg.data.labels import from_internal
from cascadeseg.data.nifti import save_nifti
from cascadeseg.data.writers import write_case
from cascadeseg.errors import InputError
from cascadeseg.evaluation.evaluate import (
    csv_columns,
    detect_convention,
    evaluate,
    load_evaluation,
    read_metrics_csv,
)
from cascadeseg.evaluation.metrics import BRATS_EMPTY_HD95, METRIC_NAMES, case_metrics
from toy import make_tiny_case

FIRST_COLUMNS = [
    "case",
    "dice_wt",
    "dice_tc",
    "dice_et",
    "hd95_wt",
    "hd95_tc",
    "hd95_et",
    "sens_wt",
    "sens_tc",
    "sens_et",
    "spec_wt",
    "spec_tc",
    "spec_et",
]


def _cases(n=3, shape=(28, 28, 20)):
    return [
        make_tiny_case(shape, seed=i, case_id=f"BraTS2021_{i:05d}", with_et=i != 2)
        for i in range(n)
    ]


def _prediction(label: np.ndarray, i: int) -> np.ndarray:
    """A plausible wrong prediction: the reference shifted by one voxel."""
    return np.roll(label, 1 + i % 2, axis=0)


def _write_preds(cases, folder, convention, skip=()):
    for i, case in enumerate(cases):
        if case.case_id in skip:
            continue
        label = from_internal(_prediction(case.label, i), convention)
        save_nifti(label, case.meta.affine, None, folder / f"{case.case_id}.nii.gz")


def _expected(case, i):
    return case_metrics(_prediction(case.label, i), case.label, case.meta.spacing)


def _written(tmp_path, n=3, pred_convention="brats2021", skip=()):
    """``n`` cases written as a BraTS 2021 dataset in ``data/``, their predictions in ``pred/``."""
    cases = _cases(n)
    for case in cases:
        write_case(case, tmp_path / "data", "brats2021")
    _write_preds(cases, tmp_path / "pred", pred_convention, skip=skip)
    return cases


def _evaluate(tmp_path, ref="data", out="out", **options):
    """:func:`evaluate` of ``pred/`` against ``ref``: one worker, no progress bar, no table."""
    return evaluate_quietly(tmp_path / "pred", tmp_path / ref, tmp_path / out, **options)


def test_first_columns_are_exact():
    assert list(csv_columns()[:13]) == FIRST_COLUMNS
    assert list(METRIC_NAMES) == FIRST_COLUMNS[1:]


@pytest.mark.parametrize(
    ("values", "reference", "expected"),
    [
        ({0, 1, 2, 4}, None, "brats2021"),
        ({0, 1, 2, 3}, None, "brats2023"),
        ({0, 1, 2, 3, 4}, None, "brats2024"),
        ({0, 1, 2}, None, "brats2021"),
        ({0, 1, 2, 3}, "brats2021", "brats2023"),  # 3 is not a 2021 value: detected
        ({0, 1, 2, 4}, "brats2023", "brats2021"),
        ({0, 1, 2}, "brats2023", "brats2023"),  # fits the reference: follows it
        ({0, 1, 2, 3}, "msd", "msd"),  # values cannot tell MSD from 2023: the reference decides
    ],
)
def test_detect_convention(values, reference, expected):
    assert detect_convention(values, reference) == expected


def test_detect_convention_rejects_unknown_values():
    with pytest.raises(InputError, match=r"\[7\]"):
        detect_convention({0, 7})


def test_brats2023_predictions_against_brats2021_dataset(tmp_path):
    cases = _written(tmp_path, pred_convention="brats2023")
    result = _evaluate(tmp_path)
    assert [r["case"] for r in result.rows] == [c.case_id for c in cases]
    for i, (case, row) in enumerate(zip(cases, result.rows)):
        assert row["status"] == "ok"
        # without ET the values {1, 2} mean the same in both conventions: the reference's is kept
        expected_conv = "brats2023" if (case.label == 3).any() else "brats2021"
        assert (row["pred_convention"], row["ref_convention"]) == (expected_conv, "brats2021")
        expected = _expected(case, i)
        for name in METRIC_NAMES:
            np.testing.assert_allclose(row[name], expected[name], equal_nan=True)
    # case 2 has no ET in the reference: ET sensitivity undefined -> NaN, counted in the summary
    assert math.isnan(result.rows[2]["sens_et"])
    assert result.summary["metrics"]["sens_et"]["n_nan"] == 1
    assert result.summary["metrics"]["sens_et"]["n"] == 2


def test_brats2021_predictions_against_flat_brats2023_references(tmp_path):
    cases = _cases(2)
    for case in cases:
        save_nifti(
            from_internal(case.label, "brats2023"),
            case.meta.affine,
            None,
            tmp_path / "ref" / f"{case.case_id}.nii.gz",
        )
    _write_preds(cases, tmp_path / "pred", "brats2021")
    result = _evaluate(tmp_path, "ref")
    for i, (case, row) in enumerate(zip(cases, result.rows)):
        assert row["ref_convention"] == "brats2023"
        assert row["pred_convention"] == "brats2021"
        assert row["dice_wt"] == pytest.approx(_expected(case, i)["dice_wt"])


def test_msd_dataset_with_named_prediction_convention(tmp_path):
    cases = _cases(2)
    for case in cases:
        write_case(case, tmp_path / "msd", "msd")
    _write_preds(cases, tmp_path / "pred", "msd")
    result = _evaluate(tmp_path, "msd", pred_convention="msd")
    for i, (case, row) in enumerate(zip(cases, result.rows)):
        assert row["status"] == "ok", row["message"]
        assert row["ref_convention"] == "msd"
        expected = _expected(case, i)
        assert row["dice_tc"] == pytest.approx(expected["dice_tc"])
        assert row["hd95_et"] == pytest.approx(expected["hd95_et"])


def test_missing_prediction_scored_as_empty_and_listed(tmp_path):
    cases = _cases(2)
    for case in cases:
        write_case(case, tmp_path / "data", "brats2021")
    _write_preds(cases, tmp_path / "pred", "brats2021", skip={cases[1].case_id})
    result = _evaluate(tmp_path)
    row = result.rows[1]
    assert row["status"] == "missing"
    assert result.missing == [cases[1].case_id]
    assert [row[f"dice_{r}"] for r in ("wt", "tc", "et")] == [0.0, 0.0, 0.0]
    assert row["hd95_wt"] == pytest.approx(BRATS_EMPTY_HD95)
    assert row["sens_wt"] == 0.0
    assert row["spec_wt"] == 1.0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["missing"] == [cases[1].case_id]
    assert summary["cases"] == {"n": 2, "ok": 1, "missing": 1, "error": 0}
    # the missing case enters the statistics as an empty prediction
    assert summary["metrics"]["dice_wt"]["n"] == 2


def test_shape_and_affine_mismatch_are_reported_per_case(tmp_path):
    cases = _written(tmp_path, 3)
    bad_shape = np.zeros((28, 28, 19), np.uint8)
    save_nifti(
        bad_shape, cases[0].meta.affine, None, tmp_path / "pred" / f"{cases[0].case_id}.nii.gz"
    )
    shifted = cases[1].meta.affine.copy()
    shifted[0, 3] += 5.0
    save_nifti(
        from_internal(cases[1].label, "brats2021"),
        shifted,
        None,
        tmp_path / "pred" / f"{cases[1].case_id}.nii.gz",
    )
    save_nifti(bad_shape, None, None, tmp_path / "pred" / "not_a_case.nii.gz")
    result = _evaluate(tmp_path)
    statuses = [r["status"] for r in result.rows]
    assert statuses == ["error", "error", "ok"]
    assert "shape (28, 28, 19)" in result.rows[0]["message"]
    assert "affine" in result.rows[1]["message"]
    assert math.isnan(result.rows[0]["dice_wt"])
    assert set(result.errors) == {cases[0].case_id, cases[1].case_id}
    assert result.summary["metrics"]["dice_wt"]["n"] == 1  # errors are left out
    assert result.summary["unmatched_predictions"] == ["not_a_case"]


def test_csv_and_summary_files(tmp_path):
    _written(tmp_path, 3)
    result = _evaluate(tmp_path)
    with (tmp_path / "out" / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    assert header[:13] == FIRST_COLUMNS
    assert "status" in header and "vol_wt_ref_ml" in header
    rows = read_metrics_csv(tmp_path / "out" / "metrics.csv")
    for read, original in zip(rows, result.rows):
        for name in METRIC_NAMES:
            np.testing.assert_allclose(read[name], original[name], rtol=1e-9, equal_nan=True)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    dice_wt = np.array([r["dice_wt"] for r in result.rows])
    stats = summary["metrics"]["dice_wt"]
    assert stats["mean"] == pytest.approx(dice_wt.mean())
    assert stats["std"] == pytest.approx(dice_wt.std(ddof=1))
    assert stats["median"] == pytest.approx(np.median(dice_wt))
    assert stats["q25"] == pytest.approx(np.percentile(dice_wt, 25))
    assert stats["q75"] == pytest.approx(np.percentile(dice_wt, 75))
    assert summary["metrics"]["sens_et"]["mean"] == pytest.approx(
        np.nanmean([r["sens_et"] for r in result.rows])
    )
    loaded = load_evaluation(tmp_path / "out")
    assert loaded.pred_dir == (tmp_path / "pred").resolve()
    assert loaded.summary["metrics"]["dice_wt"]["mean"] == pytest.approx(stats["mean"])


def test_two_workers_give_the_same_rows(tmp_path):
    _written(tmp_path, 3)
    one = _evaluate(tmp_path, out="o1")
    two = _evaluate(tmp_path, out="o2", workers=2)
    for a, b in zip(one.rows, two.rows):
        for name in METRIC_NAMES:
            np.testing.assert_allclose(a[name], b[name], equal_nan=True)


def test_missing_folders_are_input_errors(tmp_path):
    (tmp_path / "ref").mkdir()
    with pytest.raises(InputError, match=r"no (cases found|reference label maps)"):
        evaluate(tmp_path / "ref", tmp_path / "ref", tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="reference folder not found"):
        evaluate(tmp_path / "ref", tmp_path / "nope", tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="unknown label convention"):
        evaluate(tmp_path / "ref", tmp_path / "ref", tmp_path / "out", pred_convention="x")


def test_cli_evaluate(tmp_path, capsys):
    cases = _cases(2)
    for case in cases:
        write_case(case, tmp_path / "data", "brats2021")
    _write_preds(cases, tmp_path / "pred", "brats2021", skip={cases[0].case_id})
    code = main(
        [
            "evaluate",
            "--pred",
            str(tmp_path / "pred"),
            "--ref",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 1  # a missing prediction: scored as empty, but the evaluation is incomplete
    out = capsys.readouterr().out
    assert "dice_wt" in out and "1 missing predictions" in out
    assert out.startswith("WARNING: no prediction for 1 of the 2 reference cases")
    assert (tmp_path / "out" / "report.html").is_file()
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "nope"),
                "--ref",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "o"),
                "--no-report",
            ]
        )
        == 2
    )


def test_single_brats_case_folder_as_reference(tmp_path):
    case = _cases(1)[0]
    folder = write_case(case, tmp_path / "data", "brats2021")
    _write_preds([case], tmp_path / "pred", "brats2021")
    result = evaluate_quietly(tmp_path / "pred", folder, tmp_path / "out")
    assert [r["case"] for r in result.rows] == [case.case_id]
    assert result.rows[0]["dice_wt"] == pytest.approx(_expected(case, 0)["dice_wt"])
