"""Benchmark results as files and text: the JSON, its Markdown tables, the docs section.

:func:`write_results` stores a result (``FILE`` and ``FILE`` with ``.md``), :func:`load_results`
reads one back, :func:`to_markdown` gives one table per suite, and
:func:`render_performance_section` the ``docs/performance.md`` section of the result's device
(``cascadeseg benchmark --render FILE``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cascadeseg.bench.rows import fmt
from cascadeseg.errors import InputError

#: Columns every row has; the rest are details.
_MAIN_KEYS = ("what", "value", "unit", "target", "meets_target", "limited_by")
QUICK_NOTICE = "**Quick run (tiny sizes): the figures are not meaningful.**"


def _details(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in row.items() if k not in _MAIN_KEYS)


def suite_table(suite: dict[str, Any]) -> str:
    """One suite as a Markdown table: what, measured, target, met, limited by, details."""
    lines = [
        "| what | measured | target | met | limited by | details |",
        "|---|---|---|---|---|---|",
    ]
    for row in suite["rows"]:
        if "value" in row:
            measured = f"{fmt(row['value'])} {row.get('unit', '')}".strip()
        else:  # a row from an older or foreign suite: all its figures are details
            measured = ""
        cells = [
            str(row["what"]),
            measured,
            str(row.get("target", "")),
            fmt(row.get("meets_target")),
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
        parts.append(f"native CPU bf16: {fmt(m['cpu_native_bf16'])}")
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


def _suite_sections(result: dict[str, Any]) -> list[str]:
    """Lines of one ``### name`` section with its table per suite."""
    lines: list[str] = []
    for name, suite in result["suites"].items():
        lines += [f"### {name}", "", suite_table(suite), ""]
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of a benchmark result (one table per suite)."""
    lines = [
        f"Machine: {_machine_line(result)} Date {result['machine']['date']}.",
        "",
        _peak_line(result),
        "",
    ]
    if result.get("quick"):
        lines += [QUICK_NOTICE, ""]
    return "\n".join(lines + _suite_sections(result))


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
        lines += [QUICK_NOTICE, ""]
    met = [r["meets_target"] for s in result["suites"].values() for r in s["rows"]]
    checked = [x for x in met if x is not None]
    if checked:
        lines += [f"Targets met: {sum(checked)} of {len(checked)}.", ""]
    return "\n".join(lines + _suite_sections(result))


def write_results(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``out`` (JSON) and the same name with ``.md`` (Markdown tables)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    md = out.with_suffix(".md")
    md.write_text(to_markdown(result))
    return out, md


def load_results(path: Path) -> dict[str, Any]:
    """A results JSON written by :func:`write_results` (InputError naming the file if not)."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read benchmark results ({exc})") from None
    if not isinstance(result, dict) or not {"machine", "peak", "suites"} <= set(result):
        raise InputError(f"{path}: not a cascadeseg benchmark results file")
    return result
