"""The benchmarks: every speed and memory target of the project, measured in one run.

``cascadeseg benchmark --suite data|metrics|inference|training|gpu|all --device cpu|cuda --out
FILE`` runs the suites (:func:`run_benchmarks`), each timing with warm-up, repeats and medians,
adds a description of the machine and the measured matmul peak, and writes JSON plus Markdown
tables (``FILE`` with ``.md``). :func:`render_performance_section` turns a results JSON into the
``docs/performance.md`` section of its device (``cascadeseg benchmark --render FILE``).
``--quick`` shrinks every size and runs on one thread so the whole suite runs in seconds (the
smoke test); its figures mean nothing.

Every piece of benchmark code lives in this package (it sits above training, inference and the
pipeline below them, and imports from them; nothing below imports from it):

- ``timing``: :func:`~cascadeseg.bench.timing.measure` (warm-up, repeats, CUDA synchronised),
  ``timed``, samplers (resident memory), the machine description and its matmul peak.
- ``rows``: :class:`Suite`, :func:`add_row` (a figure beside its target and what limits it),
  ``conv_limit`` and ``throughput`` (GFLOP/s against the peak).
- ``report``: the results JSON, its Markdown tables and the ``docs/performance.md`` section.
- ``inputs``: sizes and widths (``--quick``), shipped CPU recipes' settings, the synthetic case
  on disk, training batches, LWS slices and the metrics' label maps.
- ``data``: the data suite and its measuring functions (synthesis, reading + preprocessing,
  cache loads, augmented crops, LWS weights).
- ``metrics``: the metrics suite (12 metrics beside MONAI and medpy, lesion-wise beside the
  official package, folder evaluation).
- ``models``: network forward timings per precision and memory format; fp32-vs-bf16 agreement.
- ``inference``: whole-case prediction timings (``benchmark_inference``).
- ``inference_suite``: the inference suite (forwards, SegResNet peer, ONNX, end to end).
- ``training``: the training suite and ``benchmark_training_step``.
- ``gpu``: the GPU check (``--suite gpu``, ``benchmarks/gpu_check.sh``).
- the CPU comparison of issue 20 (``benchmarks/cpu_vs_nnunet.py``, not a suite):
  ``cpu_compare`` (rows, JSON), ``cpu_rows`` (cascadeseg's rows and levers), ``peers``
  (nnU-Net, SegResNet), ``cpu_report`` (targets, Markdown), ``peak`` (the matmul peak over
  sizes and repeats), ``isa`` (the CPU's identity, the AVX2 cap and its check),
  ``openvino_backend`` (OpenVINO fp32/bf16/int8 members); ``lever_dice`` (the levers' Dice on
  a trained model, ``benchmarks/lever_dice.py``).
- this module: the suite registry (:data:`RUNNERS`) and :func:`run_benchmarks`.

Counting a network's parameters and FLOPs is model inspection, not measuring:
:mod:`cascadeseg.models.inspect` (``cascadeseg info`` uses it too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from cascadeseg.bench.data import data_suite
from cascadeseg.bench.gpu import gpu_suite
from cascadeseg.bench.inference_suite import inference_suite
from cascadeseg.bench.metrics import metrics_suite
from cascadeseg.bench.report import (
    load_results,
    render_performance_section,
    suite_table,
    to_markdown,
    write_results,
)
from cascadeseg.bench.rows import Suite, add_row
from cascadeseg.bench.timing import machine_info, matmul_peak, timed
from cascadeseg.bench.training import training_suite

__all__ = [
    "RUNNERS",
    "SUITES",
    "Suite",
    "add_row",
    "load_results",
    "machine_info",
    "matmul_peak",
    "render_performance_section",
    "run_benchmarks",
    "suite_table",
    "timed",
    "to_markdown",
    "write_results",
]

#: The suites of ``--suite all`` (``gpu`` runs only when named).
SUITES = ("data", "metrics", "inference", "training")

#: A suite: adds its rows and notes to the :class:`Suite` it is given.
SuiteRunner = Callable[..., None]
RUNNERS: dict[str, SuiteRunner] = {
    "data": data_suite,
    "metrics": metrics_suite,
    "inference": inference_suite,
    "training": training_suite,
    "gpu": gpu_suite,
}


def run_benchmarks(
    suites: list[str],
    *,
    device: str = "cpu",
    quick: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the named suites and return the result (what :func:`write_results` stores).

    Args:
        suites: names from :data:`RUNNERS`.
        device: ``cpu`` or ``cuda``.
        quick: tiny sizes (a smoke test; the figures mean nothing).
        command: the command line that ran the benchmark, recorded for the docs.

    Returns:
        ``{"machine", "device", "quick", "command", "peak", "suites": {name: {"rows", "notes",
        "seconds"}}}``; a row is ``{"what", "value", "unit", "target", "meets_target",
        "limited_by", ...}``.
    """
    threads = torch.get_num_threads()
    if quick:
        # Tiny work split over threads is dominated by their synchronisation, which on a busy
        # machine costs seconds: the smoke test runs on one thread (its figures mean nothing).
        torch.set_num_threads(1)
    try:
        return _run(suites, device=device, quick=quick, command=command)
    finally:
        torch.set_num_threads(threads)


def _run(suites: list[str], *, device: str, quick: bool, command: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "machine": machine_info(device),
        "device": device,
        "quick": quick,
        "command": command or f"cascadeseg benchmark --suite {','.join(suites)} --device {device}",
    }
    result["peak"] = matmul_peak(device, size=256 if quick else 2048, repeats=2 if quick else 5)
    print(f"machine: {result['machine']}\npeak: {result['peak']}", flush=True)
    result["suites"] = {}
    for name in suites:
        suite = Suite(name)
        start = time.perf_counter()
        try:
            RUNNERS[name](suite, device=device, quick=quick, peak=result["peak"])
        except Exception as exc:  # one failing suite must not lose the others' figures
            suite.notes.append(f"suite failed: {type(exc).__name__}: {exc}")
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
        result["suites"][name] = {
            "rows": suite.rows,
            "notes": suite.notes,
            "seconds": round(time.perf_counter() - start, 1),
        }
    return result
