"""CPU inference per case beside nnU-Net and MONAI, with issue 20's levers (one process).

:func:`run_comparison` measures the rows ``--rows`` selects (:func:`select_rows`) on one
synthetic 240x240x155 case: the cascadeseg rows of :mod:`cascadeseg.bench.cpu_rows` (fp32,
bf16, flips on the tumour box, ONNX Runtime, OpenVINO fp32/bf16/int8, ``torch.compile``) and
the peers of :mod:`cascadeseg.bench.peers` (nnU-Net's default network, extrapolated from one
patch; MONAI's SegResNet). Around the rows it measures the matmul peak twice
(:mod:`cascadeseg.bench.peak`), and it records the ISA check (:mod:`cascadeseg.bench.isa`):
under ``--isa avx2`` the whole process runs with the libraries capped to AVX2. The JSON is
written after every row (a killed run keeps its rows); the targets
(:func:`cascadeseg.bench.cpu_report.targets`) and the Markdown come at the end.

The command is ``benchmarks/cpu_vs_nnunet.py``; ``benchmarks/write_performance.py`` renders the
JSON into ``docs/performance.md``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cascadeseg.bench.cpu_report import KIND, markdown, targets
from cascadeseg.bench.cpu_rows import VARIANTS, CaseBench, prepare_case, variant_row
from cascadeseg.bench.isa import cpu_flags, cpu_identity, isa_check
from cascadeseg.bench.peak import (
    PEAK_SIDES,
    QUICK_PEAK_SIDES,
    matmul_peak_sweep,
    peak_values,
    row_share,
    settle_peaks,
)
from cascadeseg.bench.peers import nnunet_row, segresnet_row
from cascadeseg.bench.timing import machine_info
from cascadeseg.data.synth import SynthConfig, synthesize_dataset

PEER_ROWS: tuple[str, ...] = ("nnunet", "segresnet")
ROW_IDS: tuple[str, ...] = (*VARIANTS, *PEER_ROWS)
#: The rows a plain run measures, per ISA: about 20 minutes on 2 cores with native bf16.
DEFAULT_ROWS: dict[str, tuple[str, ...]] = {
    "native": (
        "fp32",
        "bf16",
        "bf16-roi",
        "fp32-roi",
        "onnx-fp32",
        "openvino-fp32",
        "openvino-bf16",
        "openvino-int8",
        "compile-bf16",
        "nnunet",
        "segresnet",
    ),  # measured in this order, but OpenVINO's rows last (run_order)
    # AVX2: fp32 (cascadeseg's auto resolves to fp32 there) and int8; ONNX Runtime is listed
    # so that the JSON says why it cannot be capped. About 15 minutes.
    "avx2": (
        "fp32",
        "fp32-roi",
        "onnx-fp32",
        "openvino-fp32",
        "openvino-fp32-roi",
        "openvino-int8",
        "compile-fp32",
        "nnunet",
        "segresnet",
    ),
}
#: Packages whose versions the result records.
VERSIONED = ("onnxruntime", "openvino", "nncf", "monai", "dynamic_network_architectures")


def select_rows(spec: str | None, isa: str) -> list[str]:
    """Row ids of a ``--rows`` value: comma-separated ids, ``default`` (the ISA's default
    set) or ``all``; ``None`` is ``default``. Order kept, duplicates dropped.

    Raises:
        ValueError: an unknown id.
    """
    chosen: list[str] = []
    for name in (spec or "default").split(","):
        name = name.strip()
        if not name:
            continue
        if name == "default":
            chosen += DEFAULT_ROWS[isa]
        elif name == "all":
            chosen += ROW_IDS
        elif name in ROW_IDS:
            chosen.append(name)
        else:
            raise ValueError(f"unknown row {name!r}: choose from {', '.join(ROW_IDS)}")
    return list(dict.fromkeys(chosen))


def run_order(rows: Sequence[str]) -> list[str]:
    """``rows`` with the OpenVINO rows moved last (otherwise in the order given).

    OpenVINO's thread pool stays in the process once used, and a process that forks after
    that may crash (seen in the test suite: a segfault in ``subprocess.run``, garbage in
    DataLoader workers' batches); ``torch.compile`` forks its compile workers, so it runs first.
    """
    late = [r for r in rows if r.startswith("openvino")]
    return [r for r in rows if r not in late] + late


def versions() -> dict[str, str]:
    """Installed versions of the optional packages the rows use (absent ones left out)."""
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


class Bench:
    """Rows of the comparison, written to JSON after each one (a killed run keeps its rows)."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        self.result: dict[str, Any] = {**meta, "rows": [], "skipped": [], "notes": []}

    def add(self, row: dict[str, Any]) -> None:
        row["fraction_of_peak"] = row_share(row, peak_values(self.result["matmul_peak"]))
        self.result["rows"].append(row)
        case = row.get("seconds_per_case")
        shown = f"{case:.3g} s/case" if case else f"{row['seconds_per_pass']:.3g} s/pass"
        print(f"  {row['id']}: {shown}", flush=True)
        self.save()

    def skip(self, row_id: str, reason: str) -> None:
        self.result["skipped"].append({"id": row_id, "reason": reason})
        print(f"  {row_id}: skipped: {reason}", flush=True)
        self.save()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=2) + "\n")


def synthetic_case(work: Path, quick: bool) -> Path:
    """One synthetic BraTS 2021 case (240x240x155; ``quick``: 30x30x19) under ``work``."""
    root = work / "dataset"
    config = SynthConfig(shape_scale=0.125 if quick else 1.0)
    synthesize_dataset(root, 1, seed=0, layout="brats2021", progress=False, config=config)
    return root


def measure_row(bench: Bench, ctx: CaseBench, row_id: str) -> None:
    """Measure one row into ``bench`` (a failure is recorded as a skip; the run goes on)."""
    # SegResNet halves its input 3 times: its crop is padded to a multiple of 16, as before.
    size = [math.ceil(s / 16) * 16 for s in bench.result["brain_crop"]]
    try:
        if row_id in VARIANTS:
            outcome = variant_row(ctx, VARIANTS[row_id])
        elif row_id == "nnunet":
            outcome = nnunet_row(
                bench.result["brain_crop"],
                quick=ctx.quick,
                repeats=ctx.repeats,
                warmup=max(1, ctx.warmup),
            )
        else:
            outcome = segresnet_row(
                size, quick=ctx.quick, repeats=ctx.repeats, warmup=max(1, ctx.warmup)
            )
    except Exception as exc:  # one failing row (memory, a library) must not end the run
        outcome = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    if isinstance(outcome, str):
        bench.skip(row_id, outcome)
    else:
        outcome.setdefault("id", row_id)
        bench.add(outcome)


def run_comparison(
    out: Path,
    *,
    rows: Sequence[str],
    quick: bool,
    repeats: int,
    warmup: int,
    isa: str,
    command: str,
) -> dict[str, Any]:
    """Measure ``rows`` (see the module docstring) and write ``out`` and its ``.md``."""
    start = time.perf_counter()
    if quick:
        torch.set_num_threads(1)
    sides = QUICK_PEAK_SIDES if quick else PEAK_SIDES
    peak_repeats = 2 if quick else 5
    check = isa_check(isa)
    bench = Bench(
        out,
        {
            "kind": KIND,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "quick": quick,
            "isa": isa,
            "isa_check": check,
            "rows_requested": list(rows),
            "repeats": repeats,
            "warmup": warmup,
            "machine": machine_info("cpu"),
            "cpu_identity": cpu_identity(),
            "cpu_flags": cpu_flags(),
            "versions": versions(),
            "load_average_start": list(os.getloadavg()),
            "matmul_peak": matmul_peak_sweep(sides, repeats=peak_repeats, when="before"),
        },
    )
    if isa != "native" and not check.get("capped"):
        bench.result["notes"].append(f"the {isa} cap did not hold (isa_check): figures are wrong")
    work = Path(tempfile.mkdtemp(prefix="cascadeseg_cpu_vs_nnunet_"))
    try:
        root = synthetic_case(work, quick)
        ctx = prepare_case(root, quick=quick, repeats=repeats, warmup=warmup, isa=isa, work=work)
        bench.result["brain_crop"] = [int(s) for s in ctx.pre.shape]
        bench.result["network_input"] = [int(s) for s in ctx.x.shape[2:]]
        bench.result["reference_box"] = ctx.reference_box
        for row_id in run_order(rows):
            measure_row(bench, ctx, row_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bench.result["load_average_end"] = list(os.getloadavg())
    settle_peaks(bench.result, matmul_peak_sweep(sides, repeats=peak_repeats, when="after"))
    bench.result["wall_seconds"] = time.perf_counter() - start
    bench.result["targets"] = targets(bench.result)
    bench.save()
    out.with_suffix(".md").write_text(markdown(bench.result))
    return bench.result
