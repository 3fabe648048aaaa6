"""Lesion-wise parts of ``report.html`` and of the ``compare`` tables.

Kept apart from :mod:`cascadeseg.evaluation.report` so the page's whole-volume sections stay as
they were; the report calls :func:`summary_rows_html`, :func:`method_table_html` and
:func:`cases_html`, the comparison :func:`method_columns` and :func:`method_table_markdown`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from cascadeseg.evaluation.lesion_eval import ALL_REGIONS, RULE_PREFIX
from cascadeseg.evaluation.tables import format_number

#: Figures shown per region in the method tables (means over cases).
TABLE_FIGURES: tuple[str, ...] = ("dice", "hd95", "f1")
#: At most this many cases get a lesion table in the page (worst first).
MAX_CASES = 50


def _digits(column: str) -> int:
    return 2 if "_hd95_" in column else 4


def summary_rows_html(summary: Mapping[str, Any], statistics: Sequence[str]) -> list[str]:
    """Rows for the summary table: one per lesion column, in ``summary["lesions"]`` order."""
    rows = []
    for name, stats in (summary.get("lesions") or {}).items():
        cells = "".join(f"<td>{format_number(stats[s], _digits(name))}</td>" for s in statistics)
        counts = f"<td>{stats['n']}</td><td>{stats['n_nan']}</td>"
        rows.append(f'<tr><td class="l">{name}</td>{cells}{counts}</tr>')
    return rows


def method_columns(summary: Mapping[str, Any]) -> dict[str, float]:
    """``{column: mean}`` of the lesion-wise Dice / HD95 / F1 and tp/fp/fn totals of one run."""
    lesions = summary.get("lesions") or {}
    out: dict[str, float] = {}
    for name, stats in lesions.items():
        figure = name.split("_")[1]
        if figure in TABLE_FIGURES:
            out[name] = stats["mean"]
        elif "total" in stats:
            out[name.replace(f"_{figure}_", f"_{figure}_total_", 1)] = float(stats["total"])
    return out


def align_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every method row every lesion column (NaN where a run lacks it), in one order."""
    extra = [k for row in rows for k in row if k.startswith("lesion")]
    ordered = list(dict.fromkeys(sorted(extra, key=lambda k: (k.startswith("lesion23"), k))))
    for row in rows:
        for key in ordered:
            row.setdefault(key, math.nan)
    return rows


def _table_layout(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """``[(rule set, region, [columns])]`` for the rule sets and regions present in ``rows``."""
    keys = {k for row in rows for k in row}
    layout = []
    for rule, prefix in RULE_PREFIX.items():
        for region in ALL_REGIONS:
            cols = [f"{prefix}_{fig}_{region.lower()}" for fig in TABLE_FIGURES]
            if any(c in keys for c in cols):
                layout.append((rule, region, cols))
    return layout


def method_table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Lesion-wise means per method as Markdown ("" when no run has lesion-wise columns)."""
    layout = _table_layout(rows)
    if not layout:
        return ""
    head = "| Method | " + " | ".join(
        f"{region} {fig if fig != 'f1' else 'F1'} ({rule})".replace("dice", "Dice").replace(
            "hd95", "HD95"
        )
        for rule, region, _ in layout
        for fig in TABLE_FIGURES
    )
    lines = ["Lesion-wise (mean per case):", "", head + " |", "|---|" + "---:|" * 3 * len(layout)]
    for row in rows:
        cells = [
            format_number(float(row.get(c, math.nan)), _digits(c))
            for _, _, cols in layout
            for c in cols
        ]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def method_table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """The lesion-wise method table as HTML ("" when no run has lesion-wise columns)."""
    layout = _table_layout(rows)
    if not layout:
        return ""
    top = "".join(f'<th colspan="3">{region} ({rule})</th>' for rule, region, _ in layout)
    sub = "<th>Dice</th><th>HD95</th><th>F1</th>" * len(layout)
    lines = [
        f'<table><tr><th class="l" rowspan="2">Method</th>{top}</tr>',
        f"<tr>{sub}</tr>",
    ]
    for row in rows:
        cells = "".join(
            f"<td>{format_number(float(row.get(c, math.nan)), _digits(c))}</td>"
            for _, _, cols in layout
            for c in cols
        )
        lines.append(f'<tr><td class="l">{html.escape(str(row["method"]))}</td>{cells}</tr>')
    lines.append("</table>")
    return "\n".join(lines)


def cases_html(lesions: Sequence[Mapping[str, Any]], case_order: Sequence[str]) -> str:
    """One collapsible lesion table per case (``lesions.csv`` rows), cases in ``case_order``."""
    by_case: dict[str, list[Mapping[str, Any]]] = {}
    for rec in lesions:
        by_case.setdefault(str(rec["case"]), []).append(rec)
    shown = [c for c in case_order if c in by_case][:MAX_CASES]
    if not shown:
        return ""
    parts = [
        '<p class="note">Lesions are 26-connected components per region. Status: matched, '
        "missed (reference lesion without partner), false_positive, below_threshold (brats2023: "
        "reference lesion at or under the size threshold, not scored), near_small (brats2023: "
        f"predicted component touching only such lesions). At most {MAX_CASES} cases, worst "
        "first.</p>"
    ]
    head = (
        '<tr><th class="l">rules</th><th class="l">region</th><th class="l">side</th><th>id</th>'
        '<th>volume mL</th><th>centroid (voxel)</th><th class="l">status</th><th>Dice</th>'
        "<th>HD95</th><th>partners</th></tr>"
    )
    for case in shown:
        recs = by_case[case]
        n_fp = sum(r["status"] == "false_positive" for r in recs)
        n_miss = sum(r["status"] == "missed" for r in recs)
        lines = [
            f"<details><summary>{html.escape(case)}: {len(recs)} lesion records, {n_miss} missed, "
            f"{n_fp} false positives</summary><table>{head}"
        ]
        for r in recs:
            centroid = ", ".join(
                format_number(float(r[k]), 1) for k in ("centroid_i", "centroid_j", "centroid_k")
            )
            css = {"false_positive": "bad", "missed": "missing"}.get(str(r["status"]), "")
            lines.append(
                f'<tr class="{css}"><td class="l">{html.escape(str(r["rules"]))}</td>'
                f'<td class="l">{html.escape(str(r["region"]))}</td>'
                f'<td class="l">{html.escape(str(r["source"]))}</td><td>{r["lesion_id"]}</td>'
                f"<td>{format_number(float(r['volume_ml']), 3)}</td><td>{centroid}</td>"
                f'<td class="l">{html.escape(str(r["status"]))}</td>'
                f"<td>{format_number(float(r['dice']), 3)}</td>"
                f"<td>{format_number(float(r['hd95']), 2)}</td>"
                f"<td>{html.escape(str(r.get('partners', '')))}</td></tr>"
            )
        lines.append("</table></details>")
        parts.append("\n".join(lines))
    return "\n".join(parts)
