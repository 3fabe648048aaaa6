"""``benchmarks/lever_dice.py``: every lever on tiny cases with a tiny (untrained) checkpoint.

The Dice values mean nothing here (random weights); the test checks that each lever predicts
every case or is skipped with a reason, that the baseline's difference from itself is 0, that
the tumour-box levers record their box and the pass agreement, and that the summary and its
Markdown are written. OpenVINO and NNCF rows run where those packages are installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from cascadeseg.bench.lever_dice import (
    BASELINE,
    LEVERS,
    render_section,
    summarise,
    within_tolerance,
)
from cascadeseg.config import Config, apply_overrides, to_dict
from cascadeseg.models import build_model
from cascadeseg.models.checkpoint import atomic_torch_save, make_checkpoint
from cascadeseg.runtime import cpu_bf16_is_fast
from toy import write_tiny_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lever_dice.py"


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("unet3d", base_width=4, depth=1, norm_groups=2)
    config = to_dict(apply_overrides(Config(), ["model.name=unet3d"]))
    atomic_torch_save(
        make_checkpoint(
            model_name="unet3d",
            model_args=model.model_args,
            model_state=model.state_dict(),
            config=config,
            epoch=1,
        ),
        path,
    )
    return path


def test_every_lever_predicts_each_case_or_says_why_not(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", n=2)
    ckpt = _checkpoint(tmp_path / "m.pt")
    out = tmp_path / "lever-dice.json"
    argv = ["--model", str(ckpt), "--data", str(data), "--out", str(out)]
    # A child process: OpenVINO's threads stay in a process and break later forks in it.
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parents[1] / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *argv,
            "--levers",
            ",".join(LEVERS),
            "--calibration-cases",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    skipped = {s["id"]: s["reason"] for s in result["skipped"]}
    levers = result["summary"]["levers"]
    assert set(levers) | set(skipped) == set(LEVERS)
    assert ("bf16" in levers) == cpu_bf16_is_fast()
    has_ov = importlib.util.find_spec("openvino") is not None
    assert ("openvino-fp32" in levers) == has_ov
    assert len(result["cases"]) == 2
    for row in result["cases"]:
        base = row["levers"][BASELINE]
        assert base["dice_difference"] == [0.0, 0.0, 0.0] and base["passes"] == 8
        assert all(len(r["dice"]) == 3 for r in row["levers"].values())
        roi = row["levers"]["fp32-roi"]
        assert 0 <= roi["box_fraction"] <= 1 and roi["passes"] in (1, 8)
        assert row["passes_compared"] == 8 and row["outside_voxels"] >= 0
        assert row["levers"]["onnx-fp32"]["precision"] == "fp32"
    assert levers[BASELINE]["mean_dice_difference"] == [0.0, 0.0, 0.0]
    assert result["summary"]["cases_checked_outside"] == 2
    table = out.with_suffix(".md").read_text()
    assert table.startswith("| lever |") and "outside the box" in table
    section = render_section(result)
    assert section.startswith("## Held-out Dice of the speed levers")
    assert f"--model {ckpt}" in section and "fp32-roi " in section.rsplit("\n\n", 1)[-1]


def test_summary_of_no_case_is_empty() -> None:
    assert summarise([], ["fp32"]) == {"cases": 0, "baseline": "fp32", "levers": {}}


def test_a_lever_is_kept_only_within_the_tolerance_either_way() -> None:
    """Issue 20: held-out Dice unchanged within 0.005 in every region; a gain beyond it is a
    change too (the lever computes something else)."""
    assert within_tolerance({"mean_dice_difference": [0.0, -0.005, 0.005]}) is True
    assert within_tolerance({"mean_dice_difference": [0.0, -0.0051, 0.0]}) is False
    assert within_tolerance({"mean_dice_difference": [0.0, 0.0, 0.0089]}) is False
    assert within_tolerance({"cases": 2}) is None
