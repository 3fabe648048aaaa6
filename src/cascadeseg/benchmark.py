"""The benchmark suite: every speed and memory target of the project, measured in one run.

``cascadeseg benchmark --suite data|metrics|inference|training|all --device cpu|cuda --out FILE``
runs the suites, each timing with warm-up, repeats and medians (the measuring functions live next to
the code they measure: ``data.synth``, ``data.preprocess``, ``evaluation.bench``, ``models.bench``,
``inference.bench``, ``training.bench``), adds a description of the machine and the measured matmul
peak, and writes JSON plus Markdown tables (``FILE`` with ``.md``).
:func:`render_performance_section` turns a results JSON into the ``docs/performance.md`` section
of its device (``cascadeseg benchmark --render FILE``). ``--quick`` shrinks every size and runs on
one thread so the whole suite runs in seconds (the smoke test).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cascadeseg import __version__

SUITES = ("data", "metrics", "inference", "training")


def timed(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Median, min and max wall time of ``fn()`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, threads torch uses, torch version and GPU (if any)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cascadeseg": __version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    try:
        from cascadeseg.runtime import cpu_bf16_is_fast

        info["cpu_native_bf16"] = cpu_bf16_is_fast()
    except ImportError:  # the predictor is optional for the runner
        pass
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def matmul_peak(device: str = "cpu", *, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured GFLOP/s of a square matmul: the machine's practical peak, per precision.

    Keys ``matmul_fp32_gflops`` and ``matmul_bf16_gflops``, plus ``matmul_tf32_gflops`` on CUDA
    (cuDNN runs fp32 convolutions in TF32 by default, so fp32 networks are compared with it).
    On CUDA the size is 8192 (smaller products do not fill an H100). A CPU without native bf16
    kernels (no AVX-512 BF16/AMX) computes bf16 products ~15x slower than fp32 through reference
    kernels: its bf16 peak is measured at 512 so that the measurement takes seconds.
    """
    out: dict[str, float] = {}
    n = size if device == "cpu" else 8192
    cases: list[tuple[str, torch.dtype, int]] = [
        ("fp32", torch.float32, n),
        ("bf16", torch.bfloat16, n),
    ]
    if device == "cpu":
        try:
            from cascadeseg.runtime import cpu_bf16_is_fast

            if not cpu_bf16_is_fast():
                cases[1] = ("bf16", torch.bfloat16, min(n, 512))
        except ImportError:
            pass
    else:
        cases.append(("tf32", torch.float32, n))
    for name, dtype, side in cases:
        a = torch.randn(side, side, device=device, dtype=dtype)
        b = torch.randn(side, side, device=device, dtype=dtype)
        previous = torch.backends.cuda.matmul.allow_tf32
        if device != "cpu":  # fp32 means true fp32 unless TF32 is measured
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        try:
            t = timed(functools.partial(torch.matmul, a, b), repeats=repeats)["median_s"]
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        out[f"matmul_{name}_gflops"] = 2 * side**3 / t / 1e9
        del a, b
    return out


@dataclass
class Suite:
    """Results of one suite: named rows of figures, and notes on what was skipped."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, **figures: Any) -> None:
        self.rows.append({"what": what, **figures})
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
        print(f"[{self.name}] {what}: {shown}", flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: ""}[value]
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def run_benchmarks(
    suites: list[str],
    *,
    device: str = "cpu",
    quick: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the named suites and return the result (what :func:`write_results` stores).

    Args:
        suites: names from :data:`SUITES`.
        device: ``cpu`` or ``cuda``.
        quick: tiny sizes (a smoke test; the figures mean nothing).
        command: the command line that ran the benchmark, recorded for the docs.

    Returns:
        ``{"machine", "device", "quick", "command", "peak", "suites": {name: {"rows", "notes"}}}``;
        a row is ``{"what", "value", "unit", "target", "meets_target", "limited_by", ...}``.
    """
    from cascadeseg import bench_gpu, bench_suites  # the suites import torch-heavy modules lazily

    threads = torch.get_num_threads()
    if quick:
        # Tiny work split over threads is dominated by their synchronisation, which on a busy
        # machine costs seconds: the smoke test runs on one thread (its figures mean nothing).
        torch.set_num_threads(1)
    try:
        return _run(suites, bench_suites, bench_gpu, device=device, quick=quick, command=command)
    finally:
        torch.set_num_threads(threads)


def _run(
    suites: list[str],
    bench_suites: Any,
    bench_gpu: Any,
    *,
    device: str,
    quick: bool,
    command: str | None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "machine": machine_info(device),
        "device": device,
        "quick": quick,
        "command": command or f"cascadeseg benchmark --suite {','.join(suites)} --device {device}",
    }
    result["peak"] = matmul_peak(device, size=256 if quick else 2048, repeats=2 if quick else 5)
    print(f"machine: {result['machine']}\npeak: {result['peak']}", flush=True)
    runners = {
        "data": bench_suites.data_suite,
        "metrics": bench_suites.metrics_suite,
        "inference": bench_suites.inference_suite,
        "training": bench_suites.training_suite,
        "gpu": bench_gpu.gpu_suite,
    }
    result["suites"] = {}
    for name in suites:
        suite = Suite(name)
        start = time.perf_counter()
        try:
            runners[name](suite, device=device, quick=quick, peak=result["peak"])
        except Exception as exc:  # one failing suite must not lose the others' figures
            suite.notes.append(f"suite failed: {type(exc).__name__}: {exc}")
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
        result["suites"][name] = {
            "rows": suite.rows,
            "notes": suite.notes,
            "seconds": round(time.perf_counter() - start, 1),
        }
    return result


#: Columns every row has; the rest are details.
_MAIN_KEYS = ("what", "value", "unit", "target", "meets_target", "limited_by")


def _details(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in _MAIN_KEYS)


def suite_table(suite: dict[str, Any]) -> str:
    """One suite as a Markdown table: what, measured, target, met, limited by, details."""
    lines = [
        "| what | measured | target | met | limited by | details |",
        "|---|---|---|---|---|---|",
    ]
    for row in suite["rows"]:
        if "value" in row:
            measured = f"{_fmt(row['value'])} {row.get('unit', '')}".strip()
        else:  # a row from an older or foreign suite: all its figures are details
            measured = ""
        cells = [
            str(row["what"]),
            measured,
            str(row.get("target", "")),
            _fmt(row.get("meets_target")),
            str(row.get("limited_by", "")),
            _details(row),
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    for note in suite["notes"]:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines)


def _machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    parts = [f"{m['cpu']} ({m['cores']} cores, torch uses {m['torch_threads']} threads)"]
    if "gpu" in m:
        parts.append(f"GPU {m['gpu']} ({m['gpu_memory_gib']} GiB, CUDA {m.get('cuda')})")
    if "cpu_native_bf16" in m:
        parts.append(f"native CPU bf16: {_fmt(m['cpu_native_bf16'])}")
    parts.append(f"torch {m['torch']}, Python {m['python']}, cascadeseg {m['cascadeseg']}")
    return "; ".join(parts) + "."


def _peak_line(result: dict[str, Any]) -> str:
    return (
        "Measured matmul peak in the same run: "
        + ", ".join(
            f"{k.removeprefix('matmul_').removesuffix('_gflops')} {v:.0f} GFLOP/s"
            for k, v in result["peak"].items()
        )
        + "."
    )


def to_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of a benchmark result (one table per suite)."""
    lines = [
        f"Machine: {_machine_line(result)} Date {result['machine']['date']}.",
        "",
        _peak_line(result),
        "",
    ]
    if result.get("quick"):
        lines += ["**Quick run (tiny sizes): the figures are not meaningful.**", ""]
    for name, suite in result["suites"].items():
        lines += [f"### {name}", "", suite_table(suite), ""]
    return "\n".join(lines)


def render_performance_section(result: dict[str, Any]) -> str:
    """The ``docs/performance.md`` section of one device from a benchmark result (the JSON).

    A heading naming the device, the date and the exact command, the machine and its measured
    matmul peak, then per suite a table with each figure beside its target (from issues 2-6),
    whether it is met, and what limits it.
    """
    m = result["machine"]
    device = result.get("device", "cuda" if "gpu" in m else "cpu")
    title = f"GPU: {m['gpu']}" if device == "cuda" and "gpu" in m else f"CPU: {m['cpu']}"
    command = result.get("command", "cascadeseg benchmark")
    lines = [
        f"## {title}",
        "",
        f"Measured {m['date']} with `{command}`.",
        "",
        f"Machine: {_machine_line(result)}",
        "",
        _peak_line(result)
        + " GFLOP/s of a network = FLOPs counted by `torch.utils.flop_counter` (2 per"
        " multiply-accumulate of convolutions) / median seconds; `fraction_of_peak` divides it"
        " by the matmul peak of the same precision (TF32 for fp32 on CUDA).",
        "",
    ]
    if result.get("quick"):
        lines += ["**Quick run (tiny sizes): the figures are not meaningful.**", ""]
    met = [r["meets_target"] for s in result["suites"].values() for r in s["rows"]]
    checked = [x for x in met if x is not None]
    if checked:
        lines += [f"Targets met: {sum(checked)} of {len(checked)}.", ""]
    for name, suite in result["suites"].items():
        lines += [f"### {name}", "", suite_table(suite), ""]
    return "\n".join(lines)


def write_results(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``out`` (JSON) and the same name with ``.md`` (Markdown tables)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    md = out.with_suffix(".md")
    md.write_text(to_markdown(result))
    return out, md


def load_results(path: Path) -> dict[str, Any]:
    """A results JSON written by :func:`write_results` (InputError naming the file if not)."""
    from cascadeseg.errors import InputError

    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read benchmark results ({exc})") from None
    if not isinstance(result, dict) or not {"machine", "peak", "suites"} <= set(result):
        raise InputError(f"{path}: not a cascadeseg benchmark results file")
    return result
