"""A robust CPU matmul peak: the best of several sizes and repeats, before and after the rows.

One square matmul at one size, timed by its median (:func:`cascadeseg.bench.timing.matmul_peak`),
lands low whenever anything else runs for a moment or the clock has not ramped up: a CPU
comparison measured fp32 112 GFLOP/s at its start and 185 right after its rows on the same
quiet machine. The *peak* is what the machine can do, so noise only lowers a sample; here each
precision's peak is the largest GFLOP/s over several sizes (:data:`PEAK_SIDES`) and the best
of ``repeats`` timed products at each (after one warm-up), measured before the rows and again
after them (:func:`settle_peaks` keeps the larger). Every sample is kept in the result, with
the thread count, so a low or odd peak can be traced to its size or its moment.

Which library computes it matters (a finding of this comparison, recorded with the peak):
PyTorch's fp32 matmul on an x86 CPU goes to MKL (``torch.backends.mkl``), whose kernels on AMD
CPUs are AVX2 ones, while its bf16 matmul and every channels-last convolution go to oneDNN
(AVX-512 where the CPU has it). On a CPU whose AVX-512 units are as wide as its AVX2 ones
(AMD Zen 4 runs 512-bit operations in two 256-bit halves) the two reach the same fp32
throughput; on one with full 512-bit units (Zen 5) oneDNN's fp32 convolutions can exceed MKL's
fp32 matmul, and its bf16 dot products double again. The CPU's identity is recorded beside the
peak (:func:`cascadeseg.bench.isa.cpu_identity`) for that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cascadeseg.bench.timing import measure
from cascadeseg.runtime import cpu_bf16_is_fast

#: Square matmul sides of the peak; ``--quick`` uses :data:`QUICK_PEAK_SIDES`.
PEAK_SIDES: tuple[int, ...] = (1024, 2048, 4096)
QUICK_PEAK_SIDES: tuple[int, ...] = (128, 256)
#: Sides of bf16 on a CPU without native bf16 (reference kernels ~100x slower than fp32).
SLOW_BF16_SIDES: tuple[int, ...] = (256, 512)
#: Precisions of the peak and their dtypes.
PEAK_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def best_matmul_gflops(dtype: torch.dtype, side: int, repeats: int) -> float:
    """GFLOP/s of the fastest of ``repeats`` ``side x side`` CPU matmuls (after one warm-up)."""
    a = torch.randn(side, side, dtype=dtype)
    b = torch.randn(side, side, dtype=dtype)
    timing = measure(lambda: torch.matmul(a, b), repeats=repeats, warmup=1, device="cpu")
    return 2 * side**3 / min(timing.times) / 1e9


def matmul_peak_sweep(
    sides: Sequence[int] = PEAK_SIDES, *, repeats: int = 5, when: str = ""
) -> dict[str, Any]:
    """The CPU's matmul peak per precision: the best over ``sides`` of the best of ``repeats``.

    Args:
        sides: square matmul sides.
        repeats: timed products per side (the fastest counts).
        when: a label stored with the samples (``before`` / ``after``).

    Returns:
        ``{"matmul_fp32_gflops": ..., "matmul_bf16_gflops": ..., "samples": {precision:
        {side: GFLOP/s}}, "threads": n, "when": when, "libraries": {...}}``.
    """
    out: dict[str, Any] = {"samples": {}, "threads": torch.get_num_threads(), "when": when}
    for name, dtype in PEAK_DTYPES.items():
        use = sides
        if name == "bf16" and not cpu_bf16_is_fast():
            use = tuple(s for s in SLOW_BF16_SIDES if s <= max(sides)) or (min(sides),)
        samples = {str(side): best_matmul_gflops(dtype, side, repeats) for side in use}
        out["samples"][name] = samples
        out[f"matmul_{name}_gflops"] = max(samples.values())
    out["libraries"] = {
        "fp32": "MKL (torch.matmul)" if torch.backends.mkl.is_available() else "torch.matmul",
        "bf16": "oneDNN (torch.matmul)" if torch.backends.mkldnn.is_available() else "torch",
    }
    return out


def peak_values(peak: dict[str, Any]) -> dict[str, float]:
    """``{"matmul_fp32_gflops": ..., "matmul_bf16_gflops": ...}`` of a sweep."""
    return {f"matmul_{name}_gflops": float(peak[f"matmul_{name}_gflops"]) for name in PEAK_DTYPES}


def settle_peaks(result: dict[str, Any], end: dict[str, Any]) -> None:
    """Keep the larger of the peaks before (``result["matmul_peak"]``) and after (``end``) the
    rows, per precision, store both sweeps, and recompute each row's share of the peak.

    Rows carry ``gflops_per_s`` and ``peak_precision`` (``None``: no share, e.g. int8).
    """
    start = result["matmul_peak"]
    result["matmul_peak_start"] = start
    result["matmul_peak_end"] = end
    peak = {
        key: max(value, float(end.get(key, value))) for key, value in peak_values(start).items()
    }
    result["matmul_peak"] = peak
    for row in result["rows"]:
        row["fraction_of_peak"] = row_share(row, peak)


def row_share(row: dict[str, Any], peak: dict[str, Any]) -> float | None:
    """A row's GFLOP/s over the peak of its precision, or ``None`` where it has none."""
    precision = row.get("peak_precision")
    gflops = row.get("gflops_per_s")
    if precision is None or gflops is None:
        return None
    return float(gflops) / float(peak[f"matmul_{precision}_gflops"])
