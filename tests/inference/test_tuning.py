"""Tuning the ET threshold (two-stage paper, sec. 3.4) on validation cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_members import tiny_run

from cascadeseg.errors import InputError
from cascadeseg.inference.tuning import EtStats, et_stats, tune_et_threshold, tune_postprocess
from toy import label_with_et


def test_tune_picks_best_mean_et_dice() -> None:
    # A: no ET in the reference, 3 false-positive voxels (Dice 0; 1 once removed)
    # B: 10 ET voxels predicted exactly (Dice 1; 0 once removed)
    # C: 4 ET voxels predicted exactly
    ref_a, pred_a = label_with_et(0), label_with_et(3)
    ref_b = pred_b = label_with_et(10)
    ref_c = pred_c = label_with_et(4)
    result = tune_et_threshold(
        [(pred_a, ref_a), (pred_b, ref_b), (pred_c, ref_c)], candidates=[0, 4, 5, 11]
    )
    assert result.mean_dice == pytest.approx({0: 2 / 3, 4: 1.0, 5: 2 / 3, 11: 1 / 3})
    assert result.best == 4
    assert result.n_cases == 3


def test_tune_accepts_probabilities_and_ties_go_low() -> None:
    ref = label_with_et(2)
    probs = np.zeros((3, 4, 4, 4), np.float32)
    probs[:, 0, 0, :2] = 0.9  # WT, TC and ET at two voxels = ET
    result = tune_et_threshold([(probs, ref)], candidates=[2, 0, 1])
    assert result.best == 0  # all three score 1: the smallest wins
    assert et_stats(label_with_et(2), ref) == EtStats(pred_voxels=2, dice=1.0, ref_empty=False)


def test_tune_postprocess_writes_threshold_predict_uses(tmp_path: Path) -> None:
    from cascadeseg import cli
    from cascadeseg.inference.loading import load_models

    run, data = tiny_run(tmp_path, last_without_et=True)
    argv = ["tune-postprocess", "--model", str(run), "--data", str(data), "--no-tta"]
    assert cli.main([*argv, "--device", "cpu", "--no-progress", "--candidates", "0", "10"]) == 0
    stored = json.loads((run / "postprocess.json").read_text())
    assert stored["et_min_voxels"] in (0, 10)
    assert stored["n_cases"] == 2 and set(stored["mean_et_dice"]) == {"0", "10"}
    assert load_models([run])[0].et_min_voxels == stored["et_min_voxels"]
    with pytest.raises(InputError, match="no 'test' subset"):
        tune_postprocess(run, data, cases="test", candidates=[0])
