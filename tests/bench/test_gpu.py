"""The GPU check script (benchmarks/gpu_check.sh) in its CPU smoke form, and its parts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cascadeseg.bench.gpu import UtilisationSampler
from cascadeseg.inference.memory import default_flips_per_call

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_quick_on_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    suite = result["suites"]["gpu"]
    assert not [n for n in suite["notes"] if "failed" in n]
    whats = [row["what"] for row in suite["rows"]]
    for part in (
        "checkpointing: peak memory",
        "one pass",
        "8 flips, 8 per call",
        "training loss",
        "predict from files",
    ):
        assert any(part in w for w in whats), part
    loss_row = next(r for r in suite["rows"] if "training loss" in r["what"])
    assert loss_row["epochs"] >= 2 and math.isfinite(loss_row["value"])
    # The docs section and the kept run files come back too.
    assert "### gpu" in (tmp_path / "performance-section.md").read_text()
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "eval_summary.json").is_file()


def test_gpu_check_rejects_unknown_argument() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--bogus"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "unknown argument --bogus" in done.stderr


def test_utilisation_sampler_on_cpu_has_no_samples() -> None:
    with UtilisationSampler("cpu", interval=0.01) as sampler:
        pass
    assert math.isnan(sampler.mean())


@pytest.mark.parametrize(
    ("device", "budget_passes", "expected"),
    [("cpu", 8, 2), ("cpu", 1, 1), ("cuda", 8, 8), ("cuda", 5, 4), ("cuda", 2, 2), ("cuda", 1, 1)],
)
def test_default_flips_per_call(device: str, budget_passes: int, expected: int) -> None:
    from cascadeseg.inference.memory import estimate_forward_bytes

    shape = (64, 64, 64)
    per_voxel = 100.0
    budget = estimate_forward_bytes(per_voxel, budget_passes, shape) * 1.0001
    flips = default_flips_per_call(True, torch.device(device), per_voxel, shape, budget)
    assert flips == expected
    assert default_flips_per_call(False, torch.device(device), per_voxel, shape, budget) == 1
    assert default_flips_per_call(True, torch.device(device), None, shape, budget) == 1
