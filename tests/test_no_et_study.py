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
            "balanced": {"command": "cascadeseg train b", "steps": 600, "case_balance": 0.5},
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
    assert "`data.case_balance=0.5`" in text and "about 50% of the crops" in text  # 1 and 1 case
    study = fake_study()
    study["training_cases"] = study["training_cases"][:1]  # no case without ET in the split
    text = no_et_page.write_page(study, tmp_path / "none.md").read_text()
    assert "**None without enhancing tumour**" in text
    study["command"] = "python experiments/no_et_study.py --data-seed 0"
    text = no_et_page.write_page(study, tmp_path / "cmd.md").read_text()
    assert "```bash\npython experiments/no_et_study.py --data-seed 0\n" in text


def test_balanced_share_follows_the_weights() -> None:
    assert no_et_page.balanced_share(3, 29, 0.0) == 3 / 32
    assert no_et_page.balanced_share(3, 29, 1.0) == 0.5
    assert 3 / 32 < no_et_page.balanced_share(3, 29, 0.5) < 0.5
    assert no_et_page.balanced_share(0, 29, 0.5) == 0.0


def test_training_compositions_read_the_split_and_the_cases(tmp_path: Path) -> None:
    """The cause's figures come from the run's own split: each training case's composition
    (internal labels) and tumour-core volume in mL (1 mm voxels here)."""
    import dataclasses
    import json

    import common
    import no_et_study
    import numpy as np

    from cascadeseg.data.layouts import discover_cases, read_case
    from toy import write_tiny_dataset

    settings = dataclasses.replace(common.Settings(), out=tmp_path)
    write_tiny_dataset(settings.train_dir, n=3)
    run_dir = tmp_path / "runs" / "uniform"
    run_dir.mkdir(parents=True)
    (run_dir / "split.json").write_text(
        json.dumps({"train": ["BraTS2021_00002", "BraTS2021_00000"]})
    )

    class Run:  # the one attribute the function reads
        pass

    run = Run()
    run.run_dir = run_dir  # type: ignore[attr-defined]
    rows = no_et_study.training_compositions(settings, run)  # type: ignore[arg-type]
    assert [r["case"] for r in rows] == ["BraTS2021_00002", "BraTS2021_00000"]
    refs = {r.case_id: r for r in discover_cases(settings.train_dir)}
    for row in rows:
        label = read_case(refs[row["case"]]).label
        assert row["composition"] == sorted(int(v) for v in np.unique(label) if v)
        assert row["core_ml"] == np.isin(label, (1, 3)).sum() / 1000.0
