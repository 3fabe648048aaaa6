"""A metric added from this file alone reaches metrics.csv, summary.json, report.html and plots."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

import numpy as np
import pytest
from quiet import evaluate_quietly

from cascadeseg.evaluation.metrics import (
    METRIC_NAMES,
    CaseRegion,
    MetricSpec,
    case_metrics,
    from_masks,
    hd95,
    metric_columns,
    register_metric,
    unregister_metric,
)
from cascadeseg.evaluation.report import method_table, method_table_markdown, write_report


def _volume_difference_ml(region: CaseRegion) -> float:
    """|predicted - reference| volume of the region in mL, from the confusion counts."""
    return abs(region.pred_voxels - region.ref_voxels) * region.voxel_ml


VOLUME_DIFFERENCE = MetricSpec(
    name="voldiff",
    label="Absolute volume difference",
    short="dVol",
    unit="mL",
    direction="lower",
    compute=_volume_difference_ml,
    digits=3,
    plot="voldiff",
)


@pytest.fixture
def volume_difference() -> Iterator[MetricSpec]:
    register_metric(VOLUME_DIFFERENCE)
    try:
        yield VOLUME_DIFFERENCE
    finally:
        unregister_metric("voldiff")


def test_a_registered_metric_appears_in_every_output(volume_difference, write_label, tmp_path):
    write_label(tmp_path / "ref" / "a.nii.gz")
    write_label(tmp_path / "ref" / "b.nii.gz")
    write_label(tmp_path / "pred" / "a.nii.gz", offset=1)  # the tumour moved: same volume
    write_label(tmp_path / "pred" / "b.nii.gz", empty=True)  # nothing found: all of it differs
    result = evaluate_quietly(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    wt_ml = result.rows[1]["vol_wt_ref_ml"]
    assert wt_ml > 0

    with (tmp_path / "out" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header[1:13] == list(METRIC_NAMES)  # the BraTS columns keep their place
    assert header[13:16] == ["voldiff_wt", "voldiff_tc", "voldiff_et"]
    assert header[16] == "vol_wt_pred_ml"
    assert float(rows[0]["voldiff_wt"]) == 0.0
    assert float(rows[1]["voldiff_wt"]) == pytest.approx(wt_ml)

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metrics"]["voldiff_wt"]["mean"] == pytest.approx(wt_ml / 2)
    assert summary["metrics"]["voldiff_wt"]["n"] == 2

    page = write_report(tmp_path / "out", result, n_overlays=0).read_text()
    assert "voldiff_wt" in page  # the summary table
    assert 'alt="Absolute volume difference box plots"' in page  # its own box-plot figure
    table = method_table({"one": result, "two": result})  # compare's table.csv and table.md
    assert list(table[0])[13:17] == ["voldiff_wt", "voldiff_tc", "voldiff_et", "n"]
    assert "| WT dVol |" in method_table_markdown(table)


def test_unregistered_metric_is_gone_and_brats_metrics_stay():
    register_metric(VOLUME_DIFFERENCE)
    unregister_metric("voldiff")
    assert metric_columns() == METRIC_NAMES
    with pytest.raises(ValueError, match="BraTS"):
        unregister_metric("dice")
    with pytest.raises(ValueError, match="already registered"):
        register_metric(MetricSpec("dice", "Dice", "Dice", "", "higher", _volume_difference_ml))
    with pytest.raises(ValueError, match="lowercase"):
        register_metric(MetricSpec("Vol_Diff", "x", "x", "", "lower", _volume_difference_ml))


def test_a_metric_of_masks_sees_the_region_masks():
    spec = MetricSpec(
        name="hd100",
        label="Hausdorff distance",
        short="HD",
        unit="mm",
        direction="lower",
        compute=from_masks(lambda pred, ref, spacing: hd95(pred, ref, spacing, percentile=100)),
    )
    ref = np.zeros((12, 10, 9), np.uint8)
    ref[2:7, 2:7, 2:7] = 2  # edema around a core of enhancing tumour and necrosis
    ref[3:6, 3:6, 3:6] = 3
    ref[4, 4, 4] = 1
    pred = np.roll(ref, 2, axis=0)
    register_metric(spec)
    try:
        values = case_metrics(pred, ref, (1.0, 1.0, 2.0))
    finally:
        unregister_metric("hd100")
    for region in ("wt", "tc", "et"):
        assert values[f"hd100_{region}"] >= values[f"hd95_{region}"] > 0
    assert list(values)[12:15] == ["hd100_wt", "hd100_tc", "hd100_et"]
