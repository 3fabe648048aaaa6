"""The no-ET study's page (experiments/no_et_page.py) from a fake study.json: every figure comes
from the JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import no_et_page  # noqa: E402
import write_results  # noqa: E402


def _score(tc_no_et: float) -> dict[str, Any]:
    cases = [
        {
            "case": "A",
            "dice_wt": 0.9,
            "dice_tc": 0.95,
            "dice_et": 0.9,
            "vol_tc_ref_ml": 30.0,
            "vol_tc_pred_ml": 29.0,
            "vol_et_ref_ml": 10.0,
        },
        {
            "case": "B",
            "dice_wt": 0.8,
            "dice_tc": tc_no_et,
            "dice_et": 1.0,
            "vol_tc_ref_ml": 4.0,
            "vol_tc_pred_ml": 1.0,
            "vol_et_ref_ml": 0.0,
        },
    ]
    mean = {k: sum(c[k] for c in cases) / 2 for k in ("dice_wt", "dice_tc", "dice_et")}
    return {
        "cases": cases,
        "mean": mean,
        "predict_command": "cascadeseg predict ...",
        "pred_dir": "x",
    }


def fake_study() -> dict[str, Any]:
    scores = {
        f"{k}/{s}": _score(0.123 if k == "uniform" else 0.789)
        for k in ("uniform", "balanced")
        for s in ("test", "no_et", "other")
    }
    return {
        "settings": {"train_cases": 32, "seed": 0},
        "environment": {"cpu": "Test CPU", "torch_threads": 2, "date_utc": "2026-01-01"},
        "runs": {
            "uniform": {"command": "cascadeseg train u", "steps": 600},
            "balanced": {"command": "cascadeseg train b", "steps": 600},
        },
        "scores": scores,
        "training_cases": [
            {"case": "t1", "composition": [1, 2, 3], "core_ml": 20.0},
            {"case": "t2", "composition": [1, 2], "core_ml": 6.5},
        ],
        "core_probabilities": [
            {"case": "A", "core_voxels": 9, "p10_50_90": [0.0, 0.0042, 0.1]},
            {"case": "B", "core_voxels": 9, "p10_50_90": [0.0, 0.31, 0.9]},
        ],
    }


def test_page_numbers_come_from_the_study(tmp_path: Path) -> None:
    doc = no_et_page.write_page(fake_study(), tmp_path / "results-no-et.md")
    text = doc.read_text()
    assert "0.123 -> 0.789" in text  # the cases without ET, before -> after
    assert "+0.333" in text  # TC change of the mean: (0.95+0.789)/2 - (0.95+0.123)/2
    assert "6.5 mL" in text and "Test CPU" in text and "0.157" in text  # median of 0.0042, 0.31
    section = write_results.section_page(doc, doc.name, "5. Tumour cores")
    assert section.startswith("\n## 5. Tumour cores") and "0.123 -> 0.789" in section
    assert "## Per case" not in section and "results-no-et.md" in section
