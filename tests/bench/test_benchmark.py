"""Smoke test of the benchmark suite: every suite in ``--quick`` mode, JSON and Markdown.

The quick figures mean nothing (tiny sizes on a busy machine); the test checks that each suite
produces its rows with positive numbers, targets and limits, and that the renderers show them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cascadeseg import cli
from cascadeseg.bench import Suite, add_row, load_results, render_performance_section, to_markdown
from cascadeseg.bench.models import forward_seconds, segmentation_agreement
from cascadeseg.bench.rows import conv_limit
from cascadeseg.errors import InputError
from cascadeseg.runtime import resolve_precision

#: The training suite names its rows after the precision ``auto`` resolves to on this machine
#: (bf16 on CPUs with native bf16, fp32 elsewhere).
TRAIN_PRECISION = resolve_precision("auto", "cpu")

#: Rows each quick CPU run must have, by suite (prefixes of ``what``).
EXPECTED = {
    "data": [
        "synth: one case",
        "read + validate + preprocess one case",
        "load one case from the cache",
        "3D crop + augmentation 4x4x4",
        "3D crop + augmentation 8x8x8",
        "LWS weights",
    ],
    "metrics": [
        "12 metrics, one 48x48x32 case, one core: cascadeseg",
        "12 metrics, one 48x48x32 case, one core: monai",
        "global + lesion-wise, one 64x64x48 case with ",
        "evaluate a folder of 2 48x48x32 cases, 2 workers",
    ],
    "inference": [
        *[
            f"{name} forward, {size}: {kind}"
            for name, size in (
                ("two_stage", "8x8x8"),
                ("unet3d", "8x8x8"),
                ("cunet", "8x8 x 2 slices"),
            )
            for kind in ("fp32", "fp32 channels-last", "bf16 autocast", "bf16 speed-up")
        ],
        "two_stage forward, 8x8x8: Dice fp32 vs bf16",
        "peer: MONAI SegResNet init_filters=8",
        "two_stage forward, 8x8x8: ONNX Runtime fp32",
        # The precision in the name is the one used: bf16 where the CPU has it natively.
        "predict one case from files (two_stage, ",
    ],
    "training": [
        f"train two_stage 8x8x8 batch 1, width 8, {TRAIN_PRECISION}: time",
        f"train two_stage 8x8x8 batch 1, width 8, {TRAIN_PRECISION}: peak memory",
        f"train two_stage 8x8x8 batch 1, width 8, {TRAIN_PRECISION}, checkpointing: time",
        f"train two_stage 8x8x8 batch 1, width 8, {TRAIN_PRECISION}, checkpointing: peak memory",
        f"train unet3d 8x8x8 batch 1, width 8, {TRAIN_PRECISION}: time",
        f"train cunet 8x8 batch 2, width 8, {TRAIN_PRECISION}: time",
        "train the demo recipe's step (",
        "two_stage: checkpointing time overhead",
        "loader workers needed to feed two_stage",
    ],
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """``cascadeseg benchmark --suite all --quick`` once for the whole module (~30 s)."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    status = cli.main(["benchmark", "--suite", "all", "--quick", "--out", str(out)])
    assert status == 0
    return json.loads(out.read_text()), out.with_suffix(".md").read_text(), out


def _row(result: dict[str, Any], suite: str, prefix: str) -> dict[str, Any]:
    rows = [r for r in result["suites"][suite]["rows"] if r["what"].startswith(prefix)]
    assert rows, f"no {suite} row starting with {prefix!r}: {[r['what'] for r in rows]}"
    return rows[0]


def test_every_suite_has_its_rows_with_positive_numbers(
    quick_run: tuple[dict[str, Any], str, Path],
) -> None:
    result, _, _ = quick_run
    assert result["quick"] is True
    assert result["command"].endswith("--quick")
    assert set(result["suites"]) == set(EXPECTED)
    assert result["peak"]["matmul_fp32_gflops"] > 0 and result["peak"]["matmul_bf16_gflops"] > 0
    for suite, prefixes in EXPECTED.items():
        assert not [n for n in result["suites"][suite]["notes"] if "failed" in n]
        for prefix in prefixes:
            row = _row(result, suite, prefix)
            assert math.isfinite(row["value"]), row
            # Peak memory on a CPU is the resident-set growth: 0 is a real reading at 8^3.
            assert row["value"] >= 0 if row["unit"] == "GB" else row["value"] > 0, row
            assert row["limited_by"], row
            for key, value in row.items():  # every numeric detail is a real number
                if isinstance(value, float):
                    assert not math.isnan(value), (key, row)


def test_targets_are_recorded_beside_the_figures(
    quick_run: tuple[dict[str, Any], str, Path],
) -> None:
    result, _, _ = quick_run
    synth = _row(result, "data", "synth: one case")
    assert synth["target"] == "<= 3 s"
    assert synth["meets_target"] == (synth["value"] <= 3)
    assert _row(result, "data", "read + validate")["target"] == "<= 1.5 s"
    assert _row(result, "data", "load one case from the cache")["target"] == "<= 0.1 s"
    assert _row(result, "metrics", "12 metrics, one 48x48x32 case, one core: cascadeseg")[
        "target"
    ] == ("<= 0.3 s")
    dice = _row(result, "inference", "two_stage forward, 8x8x8: Dice fp32 vs bf16")
    assert dice["target"] == ">= 0.99" and 0 < dice["value"] <= 1
    speedup = _row(result, "inference", "two_stage forward, 8x8x8: bf16 speed-up")
    assert speedup["target"] == ">= 1.8 x"
    fp32 = _row(result, "inference", "two_stage forward, 8x8x8: fp32")
    assert fp32["gflops_per_s"] > 0 and fp32["fraction_of_peak"] > 0
    onnx = _row(result, "inference", "two_stage forward, 8x8x8: ONNX Runtime")
    assert onnx["max_abs_diff_vs_torch"] < 1e-3
    # The CPU training rows carry no target (those are H100 targets).
    assert _row(result, "training", "train two_stage")["target"] == ""


def test_markdown_and_performance_section(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    result, markdown, out = quick_run
    assert markdown == to_markdown(result)
    for suite, prefixes in EXPECTED.items():
        assert f"### {suite}" in markdown
        for prefix in prefixes:
            assert prefix in markdown
    section = render_performance_section(load_results(out))
    assert section.startswith(f"## CPU: {result['machine']['cpu']}")
    assert f"`{result['command']}`" in section
    assert result["machine"]["date"] in section
    assert "| what | measured | target | met | limited by | details |" in section
    assert "| synth: one case (quick: 30x30x19) |" in section
    assert "Quick run" in section


def test_render_command_prints_the_section(
    quick_run: tuple[dict[str, Any], str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, out = quick_run
    assert cli.main(["benchmark", "--render", str(out)]) == 0
    assert capsys.readouterr().out.startswith("## CPU: ")


def test_render_refuses_a_file_that_is_not_results(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"a": 1}')
    with pytest.raises(InputError, match=r"other\.json"):
        load_results(path)


def test_add_row_target_text_and_check() -> None:
    suite = Suite("t")
    add_row(suite, "a", 2.0, "s", target=("<=", 3.0), limited_by="compute")
    add_row(suite, "b", 1.5, "x", target=(">=", 1.8), limited_by="compute", extra=1)
    add_row(suite, "c", 4.0, "s", limited_by="I/O")
    a, b, c = suite.rows
    assert (a["target"], a["meets_target"]) == ("<= 3 s", True)
    assert (b["target"], b["meets_target"], b["extra"]) == (">= 1.8 x", False, 1)
    assert (c["target"], c["meets_target"]) == ("", None)
    table = to_markdown(
        {
            "machine": {
                "cpu": "X",
                "cores": 2,
                "torch_threads": 2,
                "torch": "t",
                "python": "p",
                "cascadeseg": "v",
                "date": "d",
            },
            "peak": {"matmul_fp32_gflops": 10.0},
            "suites": {"t": {"rows": suite.rows, "notes": ["n"]}},
        }
    )
    assert "| a | 2 s | <= 3 s | yes | compute |  |" in table
    assert "| b | 1.5 x | >= 1.8 x | no | compute | extra=1 |" in table
    assert "| c | 4 s |  |  | I/O |  |" in table
    assert "Note: n" in table


def test_conv_limit_thresholds() -> None:
    assert conv_limit(0.7).startswith("compute (")
    assert conv_limit(0.3).startswith("compute + memory bandwidth")
    assert conv_limit(0.05).startswith("memory bandwidth")
    assert "kernel launches" in conv_limit(0.05, device="cuda")


def test_generic_forward_helpers_on_cpu() -> None:
    """The CUDA code path's helpers, run on the CPU with a tiny network."""
    from cascadeseg.models import build_model

    torch.manual_seed(0)
    model = build_model("unet3d", base_width=8, depth=2)
    x = torch.randn(1, 4, 8, 8, 8)
    assert forward_seconds(model, x, repeats=1, warmup=0) > 0
    assert forward_seconds(model, x, channels_last=True, repeats=1, warmup=0) > 0
    agreement = segmentation_agreement(model, x)
    assert set(agreement) == {"WT", "TC", "ET", "mean", "max_abs_diff"}
    assert 0 <= agreement["mean"] <= 1 and 0 <= agreement["max_abs_diff"] < 0.1
