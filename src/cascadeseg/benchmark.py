"""The benchmark suite: every speed and memory target of the project, measured in one run.

``cascadeseg benchmark --suite data|metrics|inference|training|all --device cpu|cuda --out FILE``
runs the suites, each timing with warm-up, repeats and medians (the measuring functions live next to
the code they measure: ``data.synth``, ``data.preprocess``, ``evaluation.bench``, ``models.bench``,
``inference.bench``, ``training.bench``), adds a description of the machine and the measured matmul
peak, and writes JSON plus a Markdown table (``FILE`` with ``.md``) that ``docs/performance.md``
quotes. ``--quick`` shrinks every size so the whole suite runs in seconds (the smoke test).
"""

from __future__ import annotations

import json
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
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def matmul_peak(device: str = "cpu", *, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured GFLOP/s of a square matmul in fp32 and bf16: the machine's practical peak."""
    out: dict[str, float] = {}
    n = size if device == "cpu" else 8192
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        t = timed(lambda a=a, b=b: a @ b, repeats=repeats)["median_s"]
        out[f"matmul_{name}_gflops"] = 2 * n**3 / t / 1e9
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
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def run_benchmarks(
    suites: list[str], *, device: str = "cpu", quick: bool = False
) -> dict[str, Any]:
    """Run the named suites and return ``{"machine": ..., "peak": ..., "suites": {...}}``."""
    from cascadeseg import bench_suites  # the suites import torch-heavy modules lazily

    result: dict[str, Any] = {"machine": machine_info(device), "quick": quick}
    result["peak"] = matmul_peak(device, size=512 if quick else 2048)
    print(f"machine: {result['machine']}\npeak: {result['peak']}", flush=True)
    runners = {
        "data": bench_suites.data_suite,
        "metrics": bench_suites.metrics_suite,
        "inference": bench_suites.inference_suite,
        "training": bench_suites.training_suite,
    }
    result["suites"] = {}
    for name in suites:
        suite = Suite(name)
        try:
            runners[name](suite, device=device, quick=quick, peak=result["peak"])
        except Exception as exc:  # one failing suite must not lose the others' figures
            suite.notes.append(f"suite failed: {type(exc).__name__}: {exc}")
            print(f"[{name}] FAILED: {exc}", flush=True)
        result["suites"][name] = {"rows": suite.rows, "notes": suite.notes}
    return result


def to_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of a benchmark result (one table per suite)."""
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; date {m['date']}; cascadeseg {m['cascadeseg']}.",
        "",
        "Measured matmul peak: "
        + ", ".join(f"{k.removeprefix('matmul_')} {v:.0f}" for k, v in result["peak"].items())
        + " (GFLOP/s).",
        "",
    ]
    for name, suite in result["suites"].items():
        lines.append(f"### {name}")
        lines.append("")
        rows = suite["rows"]
        if rows:
            keys: list[str] = []
            for row in rows:
                keys += [k for k in row if k not in keys]
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            for row in rows:
                lines.append("| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |")
        for note in suite["notes"]:
            lines.append(f"\nNote: {note}")
        lines.append("")
    return "\n".join(lines)


def write_results(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``out`` (JSON) and the same name with ``.md`` (Markdown tables)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    md = out.with_suffix(".md")
    md.write_text(to_markdown(result))
    return out, md
