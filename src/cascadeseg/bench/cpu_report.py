"""The CPU comparison's targets and its Markdown (``docs/performance.md`` section).

The targets of issue 20 are judged from the rows of one result (:func:`targets`), never typed
in: the per-case target of the run's CPU (:func:`case_target`: 60 s with native bf16; 2.5 min
on an AVX2-only CPU, native or emulated by capping the ISA), the speed-up over nnU-Net's
default, each tool at its default precision, and each timed pass's share of the matmul peak of
its precision. Two rows answer the per-case targets: cascadeseg's defaults (``predict`` as
shipped for the paper recipe on a CPU: ``--precision auto``, ``--tta-region auto``, PyTorch;
:func:`default_row_id`) and the fastest row measured, with its levers named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cascadeseg.config import load_config

#: Targets of issue 20 on the CPU.
TARGET_CASE_S = {"native": 60.0, "avx2": 150.0}
TARGET_SPEEDUP = 10.0
TARGET_PEAK_SHARE = 0.6
#: The kind of result this module renders (``result["kind"]``).
KIND = "cpu-vs-nnunet"

ISA_TITLES = {
    "native": "native ISA",
    "avx2": "AVX2 emulated on an AVX-512 CPU by capping the ISA",
}


#: The recipe whose ``inference`` settings are "cascadeseg's defaults" (the rows' network).
PAPER_RECIPE = "two_stage_brats19"


def default_row_id(result: dict[str, Any], inference: Any = None) -> str:
    """The row of cascadeseg's defaults: :data:`PAPER_RECIPE`'s ``inference.precision``
    (``auto``/``bf16``: bf16 where native, else fp32) and ``inference.tta_region`` as
    ``predict`` resolves them on the CPU (``auto``: the flips after the first on the tumour
    box, ``-roi``). ``inference``: another recipe's ``inference`` settings (tests)."""
    inference = inference or load_config(PAPER_RECIPE).inference
    native = bool(result["machine"].get("cpu_native_bf16"))
    bf16 = native and inference.precision in ("auto", "bf16")
    roi = inference.tta_region in ("tumour", "auto")
    return ("bf16" if bf16 else "fp32") + ("-roi" if roi else "")


def _case_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["tool"] == "cascadeseg" and r.get("seconds_per_case")]


def _target(target: str, row: dict[str, Any] | None, value: Any, unit: str, met: Any) -> dict:
    return {
        "target": target,
        "row": None if row is None else row["id"],
        "what": None if row is None else row["what"],
        "measured": value,
        "unit": unit,
        "met": met,
    }


def case_target(result: dict[str, Any]) -> tuple[float | None, str]:
    """The per-case target that applies to ``result``'s CPU and how the tables name it:
    60 s with native bf16; 150 s on an AVX2-only CPU, emulated by capping the ISA or native
    (``cpu_flags`` without AVX-512); ``(None, "")`` on a CPU with AVX-512 but without native
    bf16, which issue 20 gives no target."""
    isa = result.get("isa", "native")
    if isa == "avx2":
        return TARGET_CASE_S["avx2"], "on an AVX2-only CPU (emulated)"
    if isa != "native":
        return None, ""
    if result["machine"].get("cpu_native_bf16"):
        return TARGET_CASE_S["native"], "with native bf16"
    flags = result.get("cpu_flags") or []
    if flags and not any(f.startswith("avx512") for f in flags):
        return TARGET_CASE_S["avx2"], "on an AVX2-only CPU"
    return None, ""


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 20's CPU targets judged from ``result``'s rows (see the module docstring).

    Returns:
        ``[{"target", "row", "what", "measured", "unit" ("s", "x" or "share"), "met"}]``;
        ``measured`` and ``met`` are ``None`` where the row was not measured.
    """
    rows = result["rows"]
    cases = _case_rows(rows)
    by_id = {r["id"]: r for r in cases}
    default = by_id.get(default_row_id(result))
    fastest = min(cases, key=lambda r: r["seconds_per_case"]) if cases else None
    out = []
    bound, where = case_target(result)
    if bound is not None:
        for name, row in (("cascadeseg's defaults", default), ("fastest row", fastest)):
            value = None if row is None else row["seconds_per_case"]
            out.append(
                _target(
                    f"8 passes per case from files <= {bound:g} s {where} ({name})",
                    row,
                    value,
                    "s",
                    None if value is None else value <= bound,
                )
            )
    nnunet = next((r for r in rows if r["tool"] == "nnU-Net"), None)
    if nnunet is not None:
        for name, row in (("cascadeseg's defaults", default), ("fastest row", fastest)):
            ratio = None if row is None else nnunet["seconds_per_case"] / row["seconds_per_case"]
            out.append(
                _target(
                    f">= {TARGET_SPEEDUP:g}x faster than nnU-Net's default (fp32) with TTA, "
                    f"per case ({name})",
                    row,
                    ratio,
                    "x",
                    None if ratio is None else ratio >= TARGET_SPEEDUP,
                )
            )
    for row in rows:
        share = row.get("fraction_of_peak")
        if row["tool"] != "cascadeseg" or share is None:
            continue
        out.append(
            _target(
                f"one pass >= {TARGET_PEAK_SHARE:.0%} of the {row['peak_precision']} matmul "
                f"peak ({row['id']})",
                row,
                share,
                "share",
                share >= TARGET_PEAK_SHARE,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Markdown


def _num(value: Any, fmt: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{fmt}}{suffix}"


def _notes(row: dict[str, Any]) -> str:
    notes = []
    if row.get("box_fraction") is not None:
        notes.append(
            f"box {row['box_fraction']:.0%} of the volume (tumour {row['tumour_fraction']:.1%})"
        )
    if row.get("compile_s") is not None:
        notes.append(
            f"compile {row['compile_s']:.0f} s ({row.get('compile_cache', '')}), "
            f"generated code {row.get('inductor_vec_isa', '?')}"
        )
    if row.get("backend") in ("onnx", "openvino") and row.get("setup_s") is not None:
        notes.append(f"export/build {row['setup_s']:.1f} s")
    if row.get("network_gflops_per_s") is not None and row.get("seconds_per_case"):
        notes.append(f"case network {row['network_gflops_per_s']:.0f} GFLOP/s")
    wide = [k.split(" ")[1] for k in row.get("kernels", {}) if k.startswith("Convolution")]
    if wide:
        notes.append("kernels " + "/".join(sorted(set(wide))))
    return "; ".join(notes)


def rows_table(result: dict[str, Any]) -> list[str]:
    """The rows as a Markdown table."""
    rows = result["rows"]
    nnunet = next((r for r in rows if r["tool"] == "nnU-Net"), None)
    lines = [
        "| row | what | per case | how | one pass | GFLOP per pass | GFLOP/s | share of peak "
        "| nnU-Net / this | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        case = row.get("seconds_per_case")
        ratio = f"{nnunet['seconds_per_case'] / case:.2f}x" if nnunet and case else ""
        lines.append(
            f"| {row['id']} | {row['what']} | {_num(case, '.1f', ' s')} | {row['how']} "
            f"| {_num(row.get('seconds_per_pass'), '.2f', ' s')} "
            f"| {row['gflop_per_pass']:.0f} | {_num(row.get('gflops_per_s'), '.0f')} "
            f"| {_num(row.get('fraction_of_peak'), '.0%')} | {ratio} | {_notes(row)} |"
        )
    return lines


def targets_table(result: dict[str, Any]) -> list[str]:
    """The targets as a Markdown table (target, row, measured, met), judged again from the
    rows (:func:`targets`): "cascadeseg's defaults" are those of the code rendering them, which
    may differ from the run's (its JSON keeps the run's own judgement)."""
    lines = ["| target (issue 20) | row | measured | met |", "|---|---|---|---|"]
    for t in targets(result):
        value = t["measured"]
        if value is None:
            shown = "not measured"
        elif t["unit"] == "share":
            shown = f"{value:.0%}"
        elif t["unit"] == "x":
            shown = f"{value:.2f}x"
        else:
            shown = f"{value:.1f} s"
        met = "" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {t['target']} | {t['row'] or ''} | {shown} | {met} |")
    return lines


def peak_lines(result: dict[str, Any]) -> list[str]:
    """The matmul peak kept, and every sample before and after the rows."""
    peak = result["matmul_peak"]
    lines = [
        f"Matmul peak (the best over sizes and repeats, before and after the rows): fp32 "
        f"{peak['matmul_fp32_gflops']:.0f}, bf16 {peak['matmul_bf16_gflops']:.0f} GFLOP/s."
    ]
    for key in ("matmul_peak_start", "matmul_peak_end"):
        sweep = result.get(key)
        if not sweep:
            continue
        parts = [
            f"{name} " + ", ".join(f"{side}: {v:.0f}" for side, v in samples.items())
            for name, samples in sweep["samples"].items()
        ]
        lines.append(
            f"Samples {sweep['when']} ({sweep['threads']} threads; side: GFLOP/s): "
            + "; ".join(parts)
            + f" ({', '.join(f'{k} {v}' for k, v in sweep['libraries'].items())})."
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """Rows, peak, ISA check, skipped rows, targets and the machine line."""
    lines = rows_table(result)
    lines += ["", *peak_lines(result)]
    if result.get("brain_crop"):
        lines.append(
            f"Brain crop {_x(result['brain_crop'])} (network input "
            f"{_x(result['network_input'])} after padding to the network's multiple)."
        )
    check = result.get("isa_check") or {}
    lines += ["", _isa_line(result.get("isa", "native"), check)]
    for skip in result.get("skipped", []):
        lines.append(f"Skipped {skip['id']}: {skip['reason']}")
    lines += ["", *targets_table(result), "", _machine_line(result)]
    lines += [f"Note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def _isa_line(isa: str, check: dict[str, Any]) -> str:
    kernels = sorted(set(check.get("onednn_convolution_kernels") or []))
    seen = (
        f"PyTorch CPU capability {check.get('aten_cpu_capability')}, oneDNN ISA "
        f"'{check.get('onednn_isa')}', oneDNN convolution kernel {', '.join(kernels) or 'none'}"
    )
    if check.get("error"):
        seen = f"the check failed: {check['error']}"
    if isa == "native":
        return f"ISA: native (no cap); {seen}."
    verdict = {True: "the cap holds", False: "THE CAP DID NOT HOLD", None: "not checked"}[
        check.get("capped")
    ]
    caps = ", ".join(f"{k}={v}" for k, v in (check.get("caps") or {}).items())
    return f"ISA: {ISA_TITLES.get(isa, isa)} ({caps}); check: {seen}: {verdict}."


def _machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    cpu = result.get("cpu_identity") or {}
    ident = ", ".join(
        f"{k} {cpu[k]}" for k in ("family", "model", "stepping", "mhz", "core") if cpu.get(k)
    )
    return (
        f"Machine: {m['cpu']} ({ident}), {m['cores']} cores, torch {m['torch']} with "
        f"{m['torch_threads']} threads, native bf16 {m.get('cpu_native_bf16')}, flags "
        f"{' '.join(result.get('cpu_flags', [])) or 'n/a'}; versions "
        f"{', '.join(f'{k} {v}' for k, v in result.get('versions', {}).items()) or 'n/a'}; "
        f"load average (1, 5, 15 min) at the start {_load(result['load_average_start'])}, at "
        f"the end {_load(result.get('load_average_end', []))}; {result['date']}, "
        f"{result.get('wall_seconds', 0):.0f} s in all."
    )


def render_section(result: dict[str, Any]) -> str:
    """The ``docs/performance.md`` section of one comparison result."""
    isa = result.get("isa", "native")
    title = f"CPU inference beside nnU-Net, issue 20's levers ({ISA_TITLES.get(isa, isa)})"
    head = [
        f"## {title}",
        "",
        f"Measured {result['date']} with `{result['command']}`"
        + (" (--quick: the figures mean nothing)" if result.get("quick") else "")
        + ".",
        "",
    ]
    return "\n".join(head) + "\n" + markdown(result)


def _x(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


def _load(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)
