"""``benchmarks/cpu_vs_nnunet.py`` and ``cascadeseg.bench.cpu_*``: nnU-Net's sliding-window count,
the ``--quick`` run of every row, the targets judged from rows, the peak, the ISA cap.

The quick figures mean nothing (tiny networks, one thread); the tests check that every row is
measured or skipped with a reason, the JSON and Markdown are written and the targets judged.
The quick run goes in a child process (see :func:`_run_script`); ``torch.compile``'s row runs
here with the identity in its place (a cold inductor compile takes a minute even at the quick
size); optional packages (``dynamic_network_architectures``, ``openvino``, ``nncf``) make their
rows or, absent, their skip reasons.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

from cascadeseg.bench.cpu_compare import DEFAULT_ROWS, ROW_IDS, run_order, select_rows
from cascadeseg.bench.cpu_report import case_target, default_row_id, render_section, targets
from cascadeseg.bench.isa import capped_environment, cpu_flags, judge_cap, parse_probe
from cascadeseg.bench.peak import settle_peaks
from cascadeseg.bench.peers import nnunet_patches, sliding_window_steps

ROOT = Path(__file__).resolve().parents[2]


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_script("cpu_vs_nnunet")


def _has(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


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
    assert sliding_window_steps(image, patch) == expected
    n = 1
    for axis in expected:
        n *= len(axis)
    assert nnunet_patches(image, patch) == n


def test_sliding_window_step_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="step"):
        sliding_window_steps((64,), (32,), step=0.0)


def test_rows_are_chosen_by_id_default_or_all() -> None:
    assert select_rows(None, "native") == list(DEFAULT_ROWS["native"])
    assert select_rows("fp32,bf16-roi,fp32", "native") == ["fp32", "bf16-roi"]
    assert select_rows("default,openvino-bf16-roi", "avx2")[-1] == "openvino-bf16-roi"
    assert select_rows("all", "native") == list(ROW_IDS)
    assert "bf16" not in DEFAULT_ROWS["avx2"]  # cascadeseg's auto is fp32 on AVX2
    assert run_order(["openvino-fp32", "fp32", "compile-bf16", "nnunet"]) == [
        "fp32",
        "compile-bf16",
        "nnunet",
        "openvino-fp32",
    ]
    with pytest.raises(ValueError, match="unknown row"):
        select_rows("fp64", "native")
    assert bench.main(["--rows", "fp64"]) == 2


def _run_script(name: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``benchmarks/<name>.py argv`` in a child process, on one thread.

    OpenVINO's thread pool stays in a process after use, and a process forked from it later
    (a DataLoader worker, a subprocess) may crash or get garbage: the rows that load OpenVINO
    run in a child, so later tests of the suite start from a clean process.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    script = ROOT / "benchmarks" / f"{name}.py"
    return subprocess.run(
        [sys.executable, str(script), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


#: Every row but ``torch.compile``'s (a cold inductor compile takes a minute even at the quick
#: size; :func:`test_compile_row_reports_the_compile_time_apart` runs it with a stand-in).
QUICK_ROWS = [r for r in ROW_IDS if not r.startswith("compile")]


def test_quick_run_measures_every_row_or_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cpu-vs-nnunet.json"
    argv = ["--quick", "--rows", ",".join(QUICK_ROWS), "--repeats", "1", "--warmup", "0"]
    done = _run_script("cpu_vs_nnunet", [*argv, "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    measured = {row["id"]: row for row in result["rows"]}
    skipped = {s["id"]: s["reason"] for s in result["skipped"]}
    assert set(measured) | set(skipped) == set(QUICK_ROWS)
    assert not set(measured) & set(skipped)
    assert not [r for r in skipped.values() if r.startswith("failed")], skipped
    assert {"fp32", "bf16", "bf16-roi", "fp32-roi", "onnx-fp32", "segresnet"} <= set(measured)
    assert ("nnunet" in measured) == _has("dynamic_network_architectures")
    assert ("openvino-bf16" in measured) == _has("openvino")
    assert ("openvino-int8" in measured) == (_has("openvino") and _has("nncf"))
    if not _has("openvino"):
        assert "not installed" in skipped["openvino-fp32"]
    for row in measured.values():
        if row["tool"] == "cascadeseg":
            assert row["how"].startswith("measured") and row["passes"] == 8
            assert row["seconds_split"]["network"] <= row["seconds_per_case"]
        assert row["seconds_per_case"] > 0 and row["gflop_per_pass"] > 0
    roi = measured["bf16-roi"]
    assert roi["tta_region"] == "tumour" and 0 < roi["box_fraction"] <= 1
    assert 0 < roi["tumour_fraction"] <= roi["box_fraction"]
    assert roi["fraction_of_peak"] is None and roi["seconds_per_pass"] is None
    assert measured["fp32"]["fraction_of_peak"] > 0
    peak = result["matmul_peak_start"]
    assert set(peak["samples"]["fp32"]) == {"128", "256"}
    assert result["matmul_peak"]["matmul_fp32_gflops"] >= peak["matmul_fp32_gflops"]
    assert result["isa"] == "native" and result["isa_check"]["capped"] is None
    judged = {t["target"]: t for t in result["targets"]}
    bound, where = case_target(result)  # this machine's: bf16, AVX2-only or none
    assert any(f"<= {bound:g} s {where} (fastest row)" in t for t in judged) == (bound is not None)
    assert all(t["met"] in (True, False, None) for t in judged.values())
    section = render_section(result)
    assert "| target (issue 20) |" in section
    assert ("Skipped" in section) == bool(skipped)
    assert out.with_suffix(".md").read_text().startswith("| row |")
    # write_performance.py renders it into docs/performance.md (here under tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    assert _load_script("write_performance").main([str(out)]) == 0
    page = (tmp_path / "docs" / "performance.md").read_text()
    assert "issue 20's levers (native ISA)" in page and "| target (issue 20) |" in page


def test_compile_row_reports_the_compile_time_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch, "compile", lambda network: network)  # see QUICK_ROWS
    out = tmp_path / "compile.json"
    argv = ["--quick", "--rows", "compile-bf16", "--repeats", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["seconds_per_case"] is None and row["passes"] == 1
    assert row["compile_s"] >= 0 and row["seconds_per_pass"] > 0
    assert row["inductor_vec_isa"] and row["compile_cache"].startswith("fresh directory")


def _row(row_id: str, seconds: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": row_id,
        "what": row_id,
        "tool": "cascadeseg",
        "seconds_per_case": seconds,
        "fraction_of_peak": None,
        **extra,
    }


def test_targets_are_judged_from_the_rows() -> None:
    result: dict[str, Any] = {
        "isa": "native",
        "machine": {"cpu_native_bf16": True},
        "rows": [
            _row("fp32", 170.0, fraction_of_peak=0.58, peak_precision="fp32"),
            _row("bf16", 76.0, fraction_of_peak=0.7, peak_precision="bf16"),
            _row("bf16-roi", 40.0),
            _row("compile-bf16", None, fraction_of_peak=0.9, peak_precision="bf16"),
            {"id": "nnunet", "what": "nnU-Net", "tool": "nnU-Net", "seconds_per_case": 600.0},
        ],
    }
    judged = {t["target"]: t for t in targets(result)}
    default = judged[
        "8 passes per case from files <= 60 s with native bf16 (cascadeseg's defaults)"
    ]
    fastest = judged["8 passes per case from files <= 60 s with native bf16 (fastest row)"]
    # The paper recipe stores precision bf16 and tta_region auto: on the CPU, bf16 on the box.
    assert (default["row"], default["met"]) == ("bf16-roi", True)
    assert (fastest["row"], fastest["met"]) == ("bf16-roi", True)
    speedups = [t for t in judged.values() if "nnU-Net" in t["target"]]
    assert [(t["row"], round(t["measured"], 2), t["met"]) for t in speedups] == [
        ("bf16-roi", 15.0, True),
        ("bf16-roi", 15.0, True),
    ]
    whole = SimpleNamespace(precision="bf16", tta_region="volume")
    assert default_row_id(result, whole) == "bf16"
    assert default_row_id({"machine": {}}, whole) == "fp32"  # no native bf16
    shares = {t["row"]: t["met"] for t in judged.values() if t["unit"] == "share"}
    assert shares == {"fp32": False, "bf16": True, "compile-bf16": True}
    # AVX2: the 2.5-minute target, against cascadeseg's fp32 default (on the box)
    result.update(isa="avx2", machine={"cpu_native_bf16": False})
    judged = {t["target"]: t for t in targets(result)}
    result["rows"].append(_row("fp32-roi", 90.0))
    judged = {t["target"]: t for t in targets(result)}
    avx2 = judged["8 passes per case from files <= 150 s on an AVX2-only CPU (emulated) "
                  "(cascadeseg's defaults)"]  # fmt: skip
    assert (avx2["row"], avx2["met"]) == ("fp32-roi", True)
    # A CPU that is AVX2-only (no AVX-512 flag): the same target, natively.
    result.update(isa="native", cpu_flags=["avx2"])
    judged = {t["target"]: t for t in targets(result)}
    native = judged[
        "8 passes per case from files <= 150 s on an AVX2-only CPU (cascadeseg's defaults)"
    ]
    assert (native["row"], native["met"]) == ("fp32-roi", True)
    # AVX-512 without native bf16: issue 20 gives it no per-case target.
    result.update(cpu_flags=["avx2", "avx512f"])
    assert not any(t["unit"] == "s" for t in targets(result))
    assert case_target({"isa": "native", "machine": {}}) == (None, "")  # flags unknown


def test_the_best_matmul_peak_is_kept_and_shares_follow_it() -> None:
    result: dict[str, Any] = {
        "matmul_peak": {"matmul_fp32_gflops": 100.0, "matmul_bf16_gflops": 400.0},
        "rows": [
            {"peak_precision": "fp32", "gflops_per_s": 90.0},
            {"peak_precision": "bf16", "gflops_per_s": 200.0},
            {"peak_precision": None, "gflops_per_s": 300.0},  # int8: no peak of its own
        ],
    }
    settle_peaks(result, {"matmul_fp32_gflops": 180.0, "matmul_bf16_gflops": 300.0})
    assert result["matmul_peak"] == {"matmul_fp32_gflops": 180.0, "matmul_bf16_gflops": 400.0}
    assert result["matmul_peak_start"]["matmul_fp32_gflops"] == 100.0
    assert [r["fraction_of_peak"] for r in result["rows"]] == [0.5, 0.5, None]


AVX2_VERBOSE = """onednn_verbose,v1,info,oneDNN v3.12.0 (commit x)
onednn_verbose,v1,info,cpu,isa:Intel AVX2
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:blk,undef,src:f32 dst:f32,,16x16x3x3x3,0.01
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx2,forward_training,src:f32,0.2
CASCADESEG_PROBE {"aten_cpu_capability": "AVX2", "onednn_bf16": false}
"""


def test_the_cap_is_judged_from_onednn_and_torch() -> None:
    probe = parse_probe(AVX2_VERBOSE)
    assert probe["onednn_isa"] == "Intel AVX2"
    assert probe["onednn_convolution_kernels"] == ["brg_conv_fwd:avx2"]
    assert judge_cap("avx2", probe) is True
    wide = parse_probe(AVX2_VERBOSE.replace("fwd:avx2", "fwd:avx512_core"))
    assert judge_cap("avx2", wide) is False
    assert judge_cap("avx2", {**probe, "aten_cpu_capability": "AVX512"}) is False
    assert judge_cap("native", probe) is None
    env = capped_environment("avx2", {"PATH": "/bin"})
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "ONEDNN_MAX_CPU_ISA" not in capped_environment("native", env)


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="needs an x86 CPU with AVX2")
def test_avx2_mode_restarts_capped_and_records_the_check(tmp_path: Path) -> None:
    out = tmp_path / "avx2.json"
    argv = ["--quick", "--isa", "avx2", "--rows", "fp32,onnx-fp32", "--repeats", "1"]
    done = _run_script("cpu_vs_nnunet", [*argv, "--warmup", "0", "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["isa"] == "avx2"
    check = result["isa_check"]
    assert check["capped"] is True and check["aten_cpu_capability"] == "AVX2"
    assert result["machine"]["cpu_native_bf16"] is False  # the cap turns native bf16 off
    assert [r["id"] for r in result["rows"]] == ["fp32"]
    assert "no cap" in result["skipped"][0]["reason"]  # ONNX Runtime cannot be capped
    assert "AVX2 emulated on an AVX-512 CPU by capping the ISA" in render_section(result)
