"""Rows of a benchmark result: one figure each, beside its target and what limits it.

A suite collects rows in a :class:`Suite`; :func:`add_row` records the headline ``value`` and its
``unit``, the ``target`` an issue sets (``"<= 3 s"``) and whether it is met, what ``limited_by``
the figure (compute, memory bandwidth, Python overhead, I/O), and details (scalars).
:func:`throughput` gives a network's GFLOP/s, its share of the measured matmul peak and the
limit that share points to (:func:`conv_limit`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def fmt(value: Any) -> str:
    """A figure as table text: 3 significant digits, yes/no for booleans, n/a for NaN."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: ""}[value]
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def size_text(size: Sequence[int]) -> str:
    """``(160, 192, 128)`` as ``"160x192x128"``."""
    return "x".join(str(s) for s in size)


@dataclass
class Suite:
    """Results of one suite: named rows of figures, and notes on what was skipped."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, **figures: Any) -> None:
        """Append the row ``{"what": what, **figures}`` and print it."""
        self.rows.append({"what": what, **figures})
        shown = ", ".join(f"{k}={fmt(v)}" for k, v in figures.items())
        print(f"[{self.name}] {what}: {shown}", flush=True)


def add_row(
    suite: Suite,
    what: str,
    value: float,
    unit: str,
    *,
    limited_by: str,
    target: tuple[str, float] | None = None,
    target_unit: str | None = None,
    **details: Any,
) -> None:
    """Record one figure: ``value`` in ``unit``, an optional target ``("<=", 3.0)`` and notes.

    The row gets ``target`` as text (``"<= 3 s"``) and ``meets_target`` (``None`` without a
    target). Details must be scalars (they become ``key=value`` text in the tables).
    """
    row: dict[str, Any] = {"value": float(value), "unit": unit}
    if target is not None:
        op, bound = target
        row["target"] = f"{op} {bound:g} {target_unit or unit}".strip()
        row["meets_target"] = bool(value <= bound if op == "<=" else value >= bound)
    else:
        row["target"] = ""
        row["meets_target"] = None
    row["limited_by"] = limited_by
    row.update(details)
    suite.add(what, **row)


def conv_limit(fraction_of_peak: float, *, device: str = "cpu") -> str:
    """What limits a network's speed, judged by its achieved share of the matmul peak.

    Convolutions are matrix products; a network far below the matmul peak spends its time in
    FLOP-free passes over the activations (GroupNorm/BatchNorm, ReLU, additions, padding,
    layout conversions), which are limited by memory bandwidth, or (small inputs on a GPU) in
    kernel launches.
    """
    if fraction_of_peak >= 0.5:
        return "compute (convolutions near the matmul peak)"
    if fraction_of_peak >= 0.15:
        return "compute + memory bandwidth (normalisation/activation passes between convolutions)"
    if device == "cuda":
        return "memory bandwidth and kernel launches (normalisation, activations, small kernels)"
    return "memory bandwidth (normalisation/activation passes; convolution kernel efficiency)"


def throughput(
    flops: float, seconds: float, peak: dict[str, float], precision: str, device: str
) -> dict[str, Any]:
    """``{"gflops_per_s", "fraction_of_peak", "limited_by"}`` of a network pass.

    ``flops`` in one pass of ``seconds``; the share is of the matmul peak of ``precision``
    (``peak`` as :func:`~cascadeseg.bench.timing.matmul_peak` returns it), of TF32 for fp32 on
    CUDA, where cuDNN convolutions use TF32 by default (``torch.backends.cudnn.allow_tf32``).
    """
    achieved = flops / seconds / 1e9
    key = f"matmul_{precision}_gflops"
    if device == "cuda" and precision == "fp32" and "matmul_tf32_gflops" in peak:
        key = "matmul_tf32_gflops"
    share = achieved / peak[key]
    return {
        "gflops_per_s": achieved,
        "fraction_of_peak": share,
        "limited_by": conv_limit(share, device=device),
    }
