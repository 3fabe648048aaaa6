"""``benchmarks/cpu_vs_nnunet.py``: nnU-Net's sliding-window count and the ``--quick`` run.

The quick figures mean nothing (tiny networks, one thread); the test checks that every row is
measured, the JSON and Markdown are written and the targets are judged. The nnU-Net row needs
``dynamic_network_architectures`` (not a dependency of cascadeseg): without it the row is left
out with a note, and the test checks that instead.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_vs_nnunet.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cpu_vs_nnunet", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load()


@pytest.mark.parametrize(
    ("image", "patch", "expected"),
    [
        # a BraTS brain crop at nnU-Net's 128^3 patch: 2 x 2 x 2 patches
        ((144, 176, 160), (128, 128, 128), [[0, 16], [0, 48], [0, 32]]),
        # nnU-Net's own example: 110 voxels, patch 64, step 0.5 -> starts 0, 23, 46
        ((110,), (64,), [[0, 23, 46]]),
        # an image no larger than the patch (padded to it): one patch
        ((100, 128), (128, 128), [[0], [0]]),
        # a whole 240x240x155 grid: 3 x 3 x 2
        ((240, 240, 155), (128, 128, 128), [[0, 56, 112], [0, 56, 112], [0, 27]]),
    ],
)
def test_sliding_window_steps_follow_nnunet(image, patch, expected) -> None:
    assert bench.sliding_window_steps(image, patch) == expected
    n = 1
    for axis in expected:
        n *= len(axis)
    assert bench.nnunet_patches(image, patch) == n


def test_sliding_window_step_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="step"):
        bench.sliding_window_steps((64,), (32,), step=0.0)


def test_quick_run_writes_every_row_and_judges_the_targets(tmp_path: Path) -> None:
    out = tmp_path / "cpu-vs-nnunet.json"
    assert bench.main(["--quick", "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    tools = [row["tool"] for row in result["rows"]]
    has_dna = importlib.util.find_spec("dynamic_network_architectures") is not None
    assert tools.count("cascadeseg") == 3  # fp32, bf16 (quick runs it anywhere), ONNX Runtime
    assert ("nnU-Net" in tools) == has_dna
    assert "MONAI" in tools
    if not has_dna:
        assert any("dynamic_network_architectures" in note for note in result["notes"])
    for row in result["rows"]:
        assert row["seconds_per_case"] > 0 and row["seconds_per_pass"] > 0
        assert row["gflop_per_pass"] > 0 and 0 < row["fraction_of_peak"]
        assert row["passes"] == 8 or row["tool"] == "nnU-Net"
        if row["tool"] == "cascadeseg":
            assert row["how"].startswith("measured")  # from files, not extrapolated
            assert row["seconds_split"]["network"] <= row["seconds_per_case"]
        else:
            assert row["how"].startswith("EXTRAPOLATED")
    judged = [t["target"] for t in result["targets"]]
    assert any("<= 60 s" in t for t in judged)  # the bf16 row's per-case target
    assert sum("matmul peak" in t for t in judged) == 3
    assert sum("faster than nnU-Net" in t for t in judged) == (3 if has_dna else 0)
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    table = out.with_suffix(".md").read_text()
    assert "| what | per case |" in table and "load average" in table
    assert result["load_average_end"] and result["matmul_peak"]["matmul_fp32_gflops"] > 0


def test_the_larger_matmul_peak_is_kept_and_shares_follow_it() -> None:
    result: dict[str, Any] = {
        "matmul_peak": {"matmul_fp32_gflops": 100.0, "matmul_bf16_gflops": 400.0},
        "rows": [
            {"precision": "fp32", "gflops_per_s": 90.0, "fraction_of_peak": 0.9},
            {"precision": "bf16", "gflops_per_s": 200.0, "fraction_of_peak": 0.5},
        ],
    }
    bench.settle_peak(result, {"matmul_fp32_gflops": 180.0, "matmul_bf16_gflops": 300.0})
    assert result["matmul_peak"] == {"matmul_fp32_gflops": 180.0, "matmul_bf16_gflops": 400.0}
    assert result["matmul_peak_start"]["matmul_fp32_gflops"] == 100.0
    assert [r["fraction_of_peak"] for r in result["rows"]] == [0.5, 0.5]
