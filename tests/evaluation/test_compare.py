"""compare(): Table 1-style table, side-by-side plots, overlays, CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from quiet import evaluate_quietly

from cascadeseg.cli import main
from cascadeseg.data.labels import from_internal
from cascadeseg.data.nifti import save_nifti
from cascadeseg.data.writers import write_case
from cascadeseg.errors import InputError
from cascadeseg.evaluation.compare import compare
from cascadeseg.evaluation.evaluate import evaluate
from toy import make_tiny_case


@pytest.fixture
def two_methods(tmp_path):
    """A BraTS 2023 dataset and two prediction folders (exact, and shifted by one voxel)."""
    for i in range(3):
        case = make_tiny_case((28, 28, 20), seed=i, case_id=f"BraTS-GLI-{i:05d}-000")
        write_case(case, tmp_path / "data", "brats2023")
        for name, label in (("exact", case.label), ("shifted", np.roll(case.label, 1, axis=1))):
            save_nifti(
                from_internal(label, "brats2023"),
                case.meta.affine,
                None,
                tmp_path / name / f"{case.case_id}.nii.gz",
            )
    return tmp_path


def test_compare_evaluation_folder_and_prediction_folder(two_methods):
    root = two_methods
    evaluated = evaluate_quietly(root / "shifted", root / "data", root / "eval_shifted")
    result = compare(
        [root / "exact", root / "eval_shifted"],
        root / "cmp",
        names=["A", "B"],
        ref=root / "data",
        cases=["BraTS-GLI-00001-000"],
        workers=1,
        progress=False,
    )
    assert list(result.results) == ["A", "B"]
    rows = list(csv.DictReader(result.table_csv.open()))
    assert [r["method"] for r in rows] == ["A", "B"]
    assert list(rows[0])[:4] == ["method", "dice_wt", "dice_tc", "dice_et"]
    assert float(rows[0]["dice_wt"]) == 1.0 and float(rows[0]["hd95_et"]) == 0.0
    assert float(rows[1]["dice_wt"]) == pytest.approx(
        evaluated.summary["metrics"]["dice_wt"]["mean"], rel=1e-9
    )
    md = result.table_md.read_text()
    assert md.startswith("| Method | WT Dice | WT Sens | WT Spec | WT HD95 | TC Dice")
    assert "| A | 1.000 | 1.000 | 1.000 | 0.00 |" in md
    for name in ("boxplots.png", "hd95_boxplots.png", "report.html"):
        assert (root / "cmp" / name).stat().st_size > 1000
    assert [p.name for p in (root / "cmp" / "overlays").iterdir()] == [
        "overlay_BraTS-GLI-00001-000.png"
    ]
    # the prediction folder was evaluated into the comparison folder
    assert (root / "cmp" / "evaluations" / "A" / "metrics.csv").is_file()


def test_compare_errors(two_methods):
    root = two_methods
    with pytest.raises(InputError, match="--ref"):
        compare([root / "exact"], root / "cmp", progress=False)
    with pytest.raises(InputError, match="2 runs"):
        compare([root / "exact", root / "shifted"], root / "cmp", names=["x"], ref=root / "data")
    with pytest.raises(InputError, match="unknown case"):
        compare(
            [root / "exact"],
            root / "cmp",
            ref=root / "data",
            cases=["nope"],
            workers=1,
            progress=False,
        )


def test_cli_compare(two_methods, capsys):
    root = two_methods
    code = main(
        [
            "compare",
            str(root / "exact"),
            str(root / "shifted"),
            "--ref",
            str(root / "data"),
            "--out",
            str(root / "cmp"),
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| exact |" in out and "| shifted |" in out
    assert "WARNING" not in out


IDS = [f"BraTS-GLI-{i:05d}-000" for i in range(2)]


@pytest.fixture
def official_folders(tmp_path, write_label):
    """References <id>-seg.nii.gz; method A complete, method B missing its second case."""
    for case_id in IDS:
        write_label(tmp_path / "ref" / f"{case_id}-seg.nii.gz")
        write_label(tmp_path / "A" / f"{case_id}.nii.gz")
    write_label(tmp_path / "B" / f"{IDS[0]}.nii.gz", offset=1)
    return tmp_path


def _compare_cli(root, *args):
    return main(
        ["compare", *map(str, args), "--ref", str(root / "ref"), "--out", str(root / "cmp"),
         "--workers", "1", "--no-progress"]
    )  # fmt: skip


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("cascadeseg compare: error: ")
    return err[0]


def test_compare_shows_missing_cases_and_exits_1(official_folders, capsys):
    root = official_folders
    assert _compare_cli(root, root / "A", root / "B") == 1
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("WARNING: B: no prediction for 1 of the 2 reference cases")
    assert IDS[1] in first and "| A |" in out
    page = (root / "cmp" / "report.html").read_text()
    assert "<b>B</b>: status <b>incomplete</b>" in page
    assert page.index('class="warn"') < page.index("<h2>")


def test_compare_allow_missing_and_evaluation_folders(official_folders, capsys):
    root = official_folders
    evaluated = evaluate(
        root / "B", root / "ref", root / "evalB", workers=1, progress=False, allow_missing=True
    )
    assert evaluated.summary["exit_code"] == 0
    capsys.readouterr()
    # read back from metrics.csv; the comparison's own --allow-missing decides
    assert _compare_cli(root, root / "A", root / "evalB") == 1
    assert "evalB: no prediction for 1 of the 2" in capsys.readouterr().out
    assert _compare_cli(root, root / "A", root / "evalB", "--allow-missing") == 0
    assert "allowed by --allow-missing" in capsys.readouterr().out


@pytest.mark.parametrize("broken", ["no_metrics", "empty_folder", "bad_summary", "no_rows"])
def test_compare_broken_evaluation_folder_is_one_line(official_folders, capsys, broken):
    root = official_folders
    run = root / "evalA"
    evaluate_quietly(root / "A", root / "ref", run)
    if broken == "no_metrics":
        (run / "metrics.csv").unlink()
    elif broken == "empty_folder":
        run = root / "empty"
        run.mkdir()
    elif broken == "bad_summary":
        (run / "summary.json").write_text("{not json")
    else:
        header = (run / "metrics.csv").read_text().splitlines()[0]
        (run / "metrics.csv").write_text(header + "\n")
    assert _compare_cli(root, root / "A", run) == 2
    line = _one_error_line(capsys)
    assert str(run) in line
    assert not (root / "cmp" / "report.html").exists()
