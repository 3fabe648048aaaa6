"""report.html: self-contained, complete, worst cases first; plots render."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from quiet import evaluate_quietly

from cascadeseg.data.labels import ED, ET, NCR, from_internal
from cascadeseg.data.nifti import save_nifti
from cascadeseg.data.writers import write_case
from cascadeseg.evaluation.plots import LABEL_COLOURS, label_to_rgb, pick_slice
from cascadeseg.evaluation.report import mean_dice, worst_cases, write_report
from toy import make_tiny_case

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def evaluated(tmp_path):
    """Three cases in a BraTS 2021 dataset; predictions get worse with the case index."""
    for i in range(3):
        case = make_tiny_case((28, 28, 20), seed=i, case_id=f"BraTS2021_{i:05d}")
        write_case(case, tmp_path / "data", "brats2021")
        pred = np.roll(case.label, 2 * i, axis=0)
        save_nifti(
            from_internal(pred, "brats2021"),
            case.meta.affine,
            None,
            tmp_path / "pred" / f"{case.case_id}.nii.gz",
        )
    return evaluate_quietly(tmp_path / "pred", tmp_path / "data", tmp_path / "out")


def test_report_is_self_contained(evaluated, tmp_path):
    path = write_report(tmp_path / "out", evaluated, n_overlays=2)
    page = path.read_text()
    assert path.name == "report.html"
    # nothing to fetch: no http(s) in any src/href, no script
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 + 2  # two box-plot figures + two overlays
    for data in images:
        assert base64.b64decode(data)[:8] == PNG_MAGIC
    assert "dice_wt" in page and "Overlays" in page


def test_report_lists_worst_cases_first(evaluated, tmp_path):
    order = [r["case"] for r in worst_cases(evaluated)]
    assert order == ["BraTS2021_00002", "BraTS2021_00001", "BraTS2021_00000"]
    dices = [mean_dice(r) for r in worst_cases(evaluated)]
    assert dices == sorted(dices)
    page = write_report(tmp_path / "out", evaluated, n_overlays=0).read_text()
    cases_section = page[page.index("Cases, worst first") :]
    positions = [cases_section.index(c) for c in order]
    assert positions == sorted(positions)


def test_report_counts_nan_left_out(tmp_path):
    case = make_tiny_case((28, 28, 20), seed=1, case_id="c1", with_et=False)
    save_nifti(
        from_internal(case.label, "brats2021"),
        case.meta.affine,
        None,
        tmp_path / "ref" / "c1.nii.gz",
    )
    save_nifti(
        from_internal(case.label, "brats2021"),
        case.meta.affine,
        None,
        tmp_path / "pred" / "c1.nii.gz",
    )
    result = evaluate_quietly(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    page = write_report(tmp_path / "out", result).read_text()
    assert "NaN values left out" in page and "sens_et: 1" in page


def test_label_colours_follow_the_paper():
    label = np.array([[0, NCR], [ED, ET]])
    rgb = label_to_rgb(label)
    assert tuple(rgb[0, 0]) == pytest.approx(LABEL_COLOURS["non-tumour"])
    assert tuple(rgb[0, 1]) == pytest.approx(LABEL_COLOURS["necrosis"])  # green
    assert tuple(rgb[1, 0]) == pytest.approx(LABEL_COLOURS["edema"])  # blue
    assert tuple(rgb[1, 1]) == pytest.approx(LABEL_COLOURS["enhancing tumour"])  # yellow
    outside = label_to_rgb(np.zeros((1, 1), int), brain_mask=np.zeros((1, 1), bool))
    assert tuple(outside[0, 0]) == (0.0, 0.0, 0.0)


def test_pick_slice_largest_tumour_area():
    ref = np.zeros((6, 6, 5), np.uint8)
    ref[1:3, 1:3, 1] = ED  # 4 voxels on slice 1
    ref[0:4, 0:3, 3] = ET  # 12 voxels on slice 3
    assert pick_slice(ref) == 3
    pred = np.zeros_like(ref)
    pred[:, :, 4] = 1
    assert pick_slice(np.zeros_like(ref), [pred]) == 4
    assert pick_slice(np.zeros_like(ref)) == 2
