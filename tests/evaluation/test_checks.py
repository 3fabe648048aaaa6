"""Failure is never reported as success: missing, failed, empty and non-overlapping results."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from cascadeseg.cli import main
from cascadeseg.evaluation.checks import result_warnings, run_status
from cascadeseg.evaluation.evaluate import evaluate

IDS = [f"BraTS-GLI-{i:05d}-000" for i in range(3)]


def _folders(root, write_label, *, preds=IDS, offset=0, empty=False):
    for case_id in IDS:
        write_label(root / "ref" / f"{case_id}-seg.nii.gz")
    for case_id in preds:
        write_label(root / "pred" / f"{case_id}.nii.gz", offset=offset, empty=empty)


def _cli(root, *extra):
    return main(
        ["evaluate", "--pred", str(root / "pred"), "--ref", str(root / "ref"), "--out",
         str(root / "out"), "--workers", "1", "--no-progress", *extra]
    )  # fmt: skip


def _summary(root):
    return json.loads((root / "out" / "summary.json").read_text())


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("cascadeseg evaluate: error: ")
    return err[0]


def test_missing_predictions_exit_1_and_are_said_first(tmp_path, write_label, capsys):
    _folders(tmp_path, write_label, preds=IDS[:2])
    assert _cli(tmp_path) == 1
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("WARNING: no prediction for 1 of the 3 reference cases")
    assert IDS[2] in first and "--allow-missing" in first
    summary = _summary(tmp_path)
    assert list(summary)[:4] == ["status", "exit_code", "allow_missing", "warnings"]
    assert summary["status"] == "incomplete" and summary["exit_code"] == 1
    assert summary["missing"] == [IDS[2]]
    assert summary["metrics"]["dice_wt"]["n"] == 3  # still scored as empty (BraTS convention)
    page = (tmp_path / "out" / "report.html").read_text()
    body = page[page.index("<body>") :]
    warn = body.index('class="warn"')
    assert warn < body.index("<h2>")  # above every table
    assert "status <b>incomplete</b>" in body[warn:] and IDS[2] in body[warn:]


def test_allow_missing_exits_0_and_still_lists_them(tmp_path, write_label, capsys):
    _folders(tmp_path, write_label, preds=IDS[:1])
    assert _cli(tmp_path, "--allow-missing", "--no-report") == 0
    assert "allowed by --allow-missing" in capsys.readouterr().out
    summary = _summary(tmp_path)
    assert summary["missing"] == IDS[1:]
    assert (summary["status"], summary["exit_code"], summary["allow_missing"]) == (
        "incomplete",
        0,
        True,
    )


def test_every_prediction_missing(tmp_path, write_label, capsys):
    _folders(tmp_path, write_label, preds=())
    (tmp_path / "pred").mkdir()
    assert _cli(tmp_path, "--no-report") == 1
    out = capsys.readouterr().out
    assert out.startswith("WARNING: no prediction for every one of the 3 reference cases")


def test_empty_predictions_everywhere_warn(tmp_path, write_label, capsys):
    _folders(tmp_path, write_label, empty=True)
    assert _cli(tmp_path) == 0  # a warning, not a failure: the files were all evaluated
    out = capsys.readouterr().out
    assert out.startswith("WARNING: every prediction is empty")
    assert "every prediction is empty" in _summary(tmp_path)["warnings"][0]
    assert "every prediction is empty" in (tmp_path / "out" / "report.html").read_text()


def test_no_overlap_anywhere_warns(tmp_path, write_label, capsys):
    """The wrong reference set: every prediction lies beside its reference's tumour."""
    _folders(tmp_path, write_label, offset=8)
    result = evaluate(
        tmp_path / "pred", tmp_path / "ref", tmp_path / "out", workers=1, progress=False
    )
    out = capsys.readouterr().out
    assert out.startswith("WARNING: no prediction overlaps its reference's tumour in the 3 cases")
    assert len(result.summary["warnings"]) == 1
    assert result.summary["exit_code"] == 0


def test_one_overlapping_case_is_no_warning(tmp_path, write_label):
    _folders(tmp_path, write_label, offset=8)
    write_label(tmp_path / "pred" / f"{IDS[0]}.nii.gz", offset=2)  # overlaps partly
    result = evaluate(
        tmp_path / "pred", tmp_path / "ref", tmp_path / "out", workers=1, progress=False
    )
    assert result.summary["warnings"] == []


def test_predictions_without_reference_warn(tmp_path, write_label, capsys):
    _folders(tmp_path, write_label)
    write_label(tmp_path / "pred" / "BraTS-GLI-09999-000.nii.gz")
    assert _cli(tmp_path, "--no-report") == 0
    out = capsys.readouterr().out
    assert out.startswith("WARNING: predictions without a reference, not evaluated (1): ")
    summary = _summary(tmp_path)
    assert summary["unmatched_predictions"] == ["BraTS-GLI-09999-000"]


def test_broken_prediction_files_fail_their_cases(tmp_path, write_label, capsys):
    _folders(tmp_path, write_label)
    (tmp_path / "pred" / f"{IDS[0]}.nii.gz").write_bytes(b"not a nifti at all")
    data = (tmp_path / "pred" / f"{IDS[1]}.nii.gz").read_bytes()
    (tmp_path / "pred" / f"{IDS[1]}.nii.gz").write_bytes(data[: len(data) // 2])  # truncated
    assert _cli(tmp_path) == 1
    out = capsys.readouterr().out
    assert out.startswith("WARNING: 2 of the 3 cases could not be evaluated")
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert [line.split(":")[1].strip() for line in errors] == IDS[:2]
    assert all(f"{case}.nii.gz" in line for case, line in zip(IDS, errors))
    summary = _summary(tmp_path)
    assert summary["status"] == "failed" and sorted(summary["errors"]) == IDS[:2]
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('<tr class="bad">') == 2 and "status <b>failed</b>" in page


def test_one_broken_reference_is_a_failed_case(tmp_path, write_label, capsys):
    _folders(tmp_path, write_label)
    (tmp_path / "ref" / f"{IDS[2]}-seg.nii.gz").write_bytes(gzip.compress(b"\0" * 400))
    assert _cli(tmp_path, "--no-report") == 1
    assert f"error: {IDS[2]}: " in capsys.readouterr().out


def test_broken_reference_folder_is_an_input_error(tmp_path, write_label, capsys):
    _folders(tmp_path, write_label)
    for case_id in IDS:
        (tmp_path / "ref" / f"{case_id}-seg.nii.gz").write_bytes(b"\x1f\x8b broken")
    assert _cli(tmp_path) == 2
    line = _one_error_line(capsys)
    assert "none of the 3 reference label maps could be read" in line
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("ref", ["missing", "empty", "a_file", "no_labels"])
def test_missing_or_empty_reference_folder(tmp_path, write_label, capsys, ref):
    _folders(tmp_path, write_label)
    target = tmp_path / ref
    if ref == "empty":
        target.mkdir()
    elif ref == "a_file":
        target.write_text("x")
    elif ref == "no_labels":
        (target / "notes").mkdir(parents=True)
        (target / "readme.txt").write_text("x")
    code = main(
        ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(target), "--out",
         str(tmp_path / "out"), "--no-progress"]
    )  # fmt: skip
    assert code == 2
    assert str(target) in _one_error_line(capsys)


def test_status_and_warnings_from_rows():
    ok = {"case": "a", "status": "ok", "dice_wt": 0.8, "vol_wt_pred_ml": 1.0, "vol_wt_ref_ml": 1.0}
    missing = {"case": "b", "status": "missing"}
    error = {"case": "c", "status": "error", "message": "bad"}
    assert run_status([ok]) == {"status": "ok", "exit_code": 0, "allow_missing": False}
    assert run_status([ok, missing])["exit_code"] == 1
    assert run_status([ok, missing], allow_missing=True)["exit_code"] == 0
    assert run_status([ok, missing, error], allow_missing=True) == {
        "status": "failed",
        "exit_code": 1,
        "allow_missing": True,
    }
    assert result_warnings([ok]) == []
    same = {**ok, "pred_file": "/x/a.nii.gz", "ref_file": "/x/../x/a.nii.gz"}
    assert "reference files themselves" in result_warnings([same])[0]
    many = [{"case": f"m{i}", "status": "missing"} for i in range(15)]
    assert "... and 5 more" in result_warnings(many)[0]


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_every_option_states_its_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    options = capsys.readouterr().out.split("options:")[1]
    # each option's entry starts on a line indented by two spaces and a dash
    entries = re.split(r"\n  (?=-)", options)[1:]
    assert len(entries) >= 6
    for entry in entries:
        if entry.startswith("-h"):
            continue
        text = " ".join(entry.split())
        assert "default" in text or "required" in text, f"{text!r} states no default"
