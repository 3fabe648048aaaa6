"""``report.html``: one self-contained page of an evaluation (or of several methods side by side).

The page needs no server and no network: CSS is inline, there is no script, and every figure is a
PNG embedded as a ``data:image/png;base64`` URI. Sections: sources and case counts (missing
predictions, errors, NaN values left out of the means), the summary table (and with several
methods a table like the CU-Net paper's Table 1), box plots like its Fig. 4, the cases sorted
worst first by mean Dice, and overlays like its Fig. 3 for the worst (or chosen) cases.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascadeseg.data.labels import REGIONS, to_internal
from cascadeseg.data.nifti import load_nifti
from cascadeseg.evaluation import lesion_report
from cascadeseg.evaluation.checks import STATUS_ERROR
from cascadeseg.evaluation.evaluate import STATISTICS, EvaluationResult, detect_convention
from cascadeseg.evaluation.matching import ReferenceItem, find_references
from cascadeseg.evaluation.metrics import METRICS, MetricSpec, metric_columns, metric_spec
from cascadeseg.evaluation.plots import boxplot_figure, overlay_figure
from cascadeseg.evaluation.tables import format_number
from cascadeseg.fsutil import write_text_atomic

Results = EvaluationResult | Sequence[EvaluationResult] | Mapping[str, EvaluationResult]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
tr.bad td{background:#fff1f0}tr.missing td{background:#fffbe6}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
.note{color:#555;font-size:.85em}code{background:#f5f5f5;padding:0 3px}
.warn{background:#fff4e5;border-left:5px solid #d9480f;padding:6px 14px;margin:1em 0}
.warn li{margin:3px 0}
"""


def normalize_results(
    results: Results, methods: Sequence[str] | None = None
) -> dict[str, EvaluationResult]:
    """``{method name: result}`` from one result, a sequence or a mapping.

    Names come from ``methods`` when given, else from the mapping's keys, else from each result's
    output folder name.
    """
    if isinstance(results, EvaluationResult):
        items: list[tuple[str, EvaluationResult]] = [(results.out_dir.name or "method", results)]
    elif isinstance(results, Mapping):
        items = list(results.items())
    else:
        items = [(r.out_dir.name or f"method {i + 1}", r) for i, r in enumerate(results)]
    if methods is not None:
        if len(methods) != len(items):
            raise ValueError(f"{len(methods)} method names for {len(items)} results")
        items = [(name, r) for name, (_, r) in zip(methods, items)]
    named: dict[str, EvaluationResult] = {}
    for name, r in items:
        unique, k = name, 2
        while unique in named:  # two folders called "eval" stay apart
            unique, k = f"{name} ({k})", k + 1
        named[unique] = r
    return named


def table_metrics() -> list[MetricSpec]:
    """The metrics of the method tables (``in_report``), by ``table_rank``: Dice, Sens, Spec, HD95
    (CU-Net Table 1, plus HD95), then registered ones."""
    return sorted((s for s in METRICS if s.in_report), key=lambda s: s.table_rank)


def method_table(results: Mapping[str, EvaluationResult]) -> list[dict[str, Any]]:
    """One row per method: mean of each metric per region (CU-Net Table 1, plus HD95).

    Returns:
        ``[{"method": name, "dice_wt": mean, ..., "hd95_et": mean, "n": cases}]``, metrics in
        the order of :func:`table_metrics` (``dice, sens, spec, hd95``) x ``WT, TC, ET``.
    """
    rows = []
    for name, result in results.items():
        row: dict[str, Any] = {"method": name}
        for spec in table_metrics():
            for col in spec.columns:
                row[col] = result.summary["metrics"][col]["mean"]
        row["n"] = len(result.scored_rows())
        row.update(lesion_report.method_columns(result.summary))
        rows.append(row)
    return lesion_report.align_columns(rows)


def method_table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The method table as Markdown (Dice / Sens / Spec / HD95 per region)."""
    cells_of = [(r, spec) for r in REGIONS for spec in table_metrics()]
    head = "| Method | " + " | ".join(f"{r} {spec.short}" for r, spec in cells_of) + " | n |"
    sep = "|---|" + "---:|" * (len(cells_of) + 1)
    lines = [head, sep]
    for row in rows:
        cells = [format_number(row[spec.column(r)], spec.digits) for r, spec in cells_of]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {row['n']} |")
    lesion_table = lesion_report.method_table_markdown(rows)
    return "\n".join(lines) + "\n" + (f"\n{lesion_table}" if lesion_table else "")


def mean_dice(row: Mapping[str, Any]) -> float:
    """Mean of a row's three Dice scores (NaN for error rows)."""
    values = [float(row[col]) for col in metric_spec("dice").columns]
    return float(np.mean(values)) if not any(math.isnan(v) for v in values) else math.nan


def worst_cases(result: EvaluationResult, n: int | None = None) -> list[dict[str, Any]]:
    """Scored rows sorted by mean Dice, worst first (``n`` of them, all when ``None``)."""
    rows = sorted(result.scored_rows(), key=lambda r: (mean_dice(r), r["case"]))
    return rows if n is None else rows[:n]


# --------------------------------------------------------------------------------------------
# Overlays


def _load_internal(path: str | os.PathLike[str], convention: str | None) -> np.ndarray:
    array, _, _ = load_nifti(path)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if not convention:
        convention = detect_convention(np.unique(array).tolist())
    return to_internal(array, convention, source=str(path))


def load_overlay_images(
    reference: ReferenceItem | None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """FLAIR and T1ce volumes ``(X, Y, Z)`` of a reference case (``None`` where absent).

    A 4D ``image`` file (MSD) is split with the reader's channel map (MSD default: FLAIR 0,
    T1gd 2).
    """
    if reference is None:
        return None, None
    images = reference.images
    flair = t1ce = None
    if "flair" in images:
        flair = load_nifti(images["flair"], dtype=np.float32)[0]
    if "t1ce" in images:
        t1ce = load_nifti(images["t1ce"], dtype=np.float32)[0]
    if "image" in images and (flair is None or t1ce is None):
        volume = load_nifti(images["image"], dtype=np.float32)[0]
        channels = {"flair": 0, "t1ce": 2, **reference.channels}
        if volume.ndim == 4 and volume.shape[3] > max(channels["flair"], channels["t1ce"]):
            flair, t1ce = volume[..., channels["flair"]], volume[..., channels["t1ce"]]
    return flair, t1ce


def references_by_case(root: str | os.PathLike[str] | None) -> dict[str, ReferenceItem]:
    """``{case_id: reference}`` of a dataset folder, for its images (empty when unavailable)."""
    if root is None:
        return {}
    try:
        refs = find_references(root)
    except Exception:  # overlays are optional: a folder without readable images just has none
        return {}
    return {item.case_id: item for item in refs if item.images}


def write_overlays(
    out_dir: str | os.PathLike[str],
    results: Mapping[str, EvaluationResult],
    cases: Sequence[str],
    *,
    images: Mapping[str, ReferenceItem] | None = None,
) -> dict[str, Path]:
    """One Fig. 3-style PNG per case: FLAIR, T1ce, ground truth, each method's prediction.

    Args:
        out_dir: folder for ``overlay_<case>.png``.
        results: method name -> evaluation (its rows name the prediction and reference files).
        cases: case ids.
        images: case id -> reference item with image files (see :func:`references_by_case`);
            cases without images get label panels only.

    Returns:
        ``{case_id: png path}`` for the cases that could be drawn.
    """
    out_dir = Path(out_dir)
    images = images or {}
    by_case = {name: {r["case"]: r for r in res.rows} for name, res in results.items()}
    written: dict[str, Path] = {}
    for case in cases:
        rows = {name: rows[case] for name, rows in by_case.items() if case in rows}
        ref_row = next((r for r in rows.values() if r.get("ref_file")), None)
        if ref_row is None:
            continue
        ref_label = _load_internal(ref_row["ref_file"], ref_row.get("ref_convention"))
        predictions = {}
        for name, row in rows.items():
            if row.get("status") == STATUS_ERROR:
                continue
            if row.get("pred_file"):
                predictions[name] = _load_internal(row["pred_file"], row.get("pred_convention"))
            else:  # missing prediction: drawn as empty, as it was scored
                predictions[name] = np.zeros_like(ref_label)
        flair, t1ce = load_overlay_images(images.get(case))
        dice_text = ", ".join(
            f"{name}: {mean_dice(row):.3f}"
            for name, row in rows.items()
            if row.get("status") != STATUS_ERROR
        )
        written[case] = overlay_figure(
            flair,
            t1ce,
            ref_label,
            predictions,
            out_dir / f"overlay_{case}.png",
            title=f"{case} (mean Dice {dice_text})",
        )
    return written


# --------------------------------------------------------------------------------------------
# HTML


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _summary_table_html(result: EvaluationResult) -> str:
    head = "".join(f"<th>{s}</th>" for s in STATISTICS)
    lines = [f'<table><tr><th class="l">metric</th>{head}<th>n</th><th>NaN left out</th></tr>']
    for spec in (s for s in METRICS if s.in_report):
        for name in spec.columns:
            stats = result.summary["metrics"][name]
            cells = "".join(
                f"<td>{format_number(stats[s], spec.summary_digits)}</td>" for s in STATISTICS
            )
            lines.append(
                f'<tr><td class="l">{name}</td>{cells}'
                f"<td>{stats['n']}</td><td>{stats['n_nan']}</td></tr>"
            )
    lines.extend(lesion_report.summary_rows_html(result.summary, STATISTICS))
    lines.append("</table>")
    return "\n".join(lines)


def _method_table_html(rows: Sequence[dict[str, Any]]) -> str:
    specs = table_metrics()
    top = "".join(f'<th colspan="{len(specs)}">{r}</th>' for r in REGIONS)
    sub = "".join(f"<th>{spec.short}</th>" for _ in REGIONS for spec in specs)
    lines = [
        f'<table><tr><th class="l" rowspan="2">Method</th>{top}<th rowspan="2">n</th></tr>',
        f"<tr>{sub}</tr>",
    ]
    for row in rows:
        cells = "".join(
            f"<td>{format_number(row[spec.column(r)], spec.digits)}</td>"
            for r in REGIONS
            for spec in specs
        )
        lines.append(
            f'<tr><td class="l">{html.escape(row["method"])}</td>{cells}<td>{row["n"]}</td></tr>'
        )
    lines.append("</table>")
    return "\n".join(lines)


def _cases_table_html(result: EvaluationResult) -> str:
    cols = [(col, spec.digits) for spec in METRICS if spec.in_cases_table for col in spec.columns]
    head = "".join(f"<th>{c}</th>" for c, _ in cols)
    lines = [
        f'<table><tr><th class="l">case</th><th>mean Dice</th>{head}<th class="l">status</th></tr>'
    ]
    ordered = worst_cases(result) + [r for r in result.rows if r["status"] == STATUS_ERROR]
    for row in ordered:
        cells = "".join(
            f"<td>{format_number(float(row.get(c, math.nan)), digits)}</td>" for c, digits in cols
        )
        status = html.escape(row["status"] + (f": {row['message']}" if row.get("message") else ""))
        css = {"error": "bad", "missing": "missing"}.get(row["status"], "")
        lines.append(
            f'<tr class="{css}"><td class="l">{html.escape(row["case"])}</td>'
            f'<td>{format_number(mean_dice(row))}</td>{cells}<td class="l">{status}</td></tr>'
        )
    lines.append("</table>")
    return "\n".join(lines)


def _warnings_html(named: Mapping[str, EvaluationResult]) -> str:
    """The warnings of every method (missing, failed, empty, no overlap...), for the page top."""
    items = []
    for name, res in named.items():
        prefix = f"<b>{html.escape(name)}</b>: " if len(named) > 1 else ""
        status = res.summary.get("status")
        if status and status != "ok":
            items.append(f"<li>{prefix}status <b>{html.escape(str(status))}</b></li>")
        items.extend(
            f"<li>{prefix}{html.escape(str(w))}</li>" for w in res.summary.get("warnings", [])
        )
    if not items:
        return ""
    return '<div class="warn"><b>Warnings</b><ul>' + "".join(items) + "</ul></div>"


def _counts_html(name: str, result: EvaluationResult) -> str:
    cases = result.summary["cases"]
    left_out = {m: s["n_nan"] for m, s in result.summary["metrics"].items() if s["n_nan"]}
    parts = [
        f"<b>{html.escape(name)}</b>: {cases['n']} cases, {cases['ok']} evaluated, "
        f"{cases['missing']} missing predictions (scored as empty), {cases['error']} errors."
    ]
    if left_out:
        text = ", ".join(f"{m}: {n}" for m, n in left_out.items())
        parts.append(
            f"NaN values left out of the statistics (undefined: empty reference for sensitivity, "
            f"no reference negatives for specificity): {html.escape(text)}."
        )
    if result.missing:
        parts.append("Missing: " + html.escape(", ".join(result.missing)) + ".")
    if result.errors:
        errs = "; ".join(f"{c}: {m}" for c, m in result.errors.items())
        parts.append("Errors: " + html.escape(errs) + ".")
    source = result.summary.get("source", {})
    if source:
        parts.append(
            f"Predictions <code>{html.escape(str(source.get('pred_dir', '')))}</code>, references "
            f"<code>{html.escape(str(source.get('ref', '')))}</code>."
        )
    return "<p>" + " ".join(parts) + "</p>"


def write_report(
    out_dir: str | os.PathLike[str],
    results: Results,
    *,
    methods: Sequence[str] | None = None,
    images_for_overlays: str | os.PathLike[str] | None = None,
    overlay_cases: Sequence[str] | None = None,
    n_overlays: int = 3,
    title: str = "cascadeseg evaluation",
    figures_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (self-contained) for one or several evaluations.

    Args:
        out_dir: output folder.
        results: one :class:`EvaluationResult`, a sequence, or ``{method name: result}``.
        methods: names of the methods (for a sequence or a single result).
        images_for_overlays: dataset folder with FLAIR/T1ce images for the overlays; ``None``
            uses the first result's reference folder when it is a dataset with images.
        overlay_cases: case ids to draw; ``None`` draws the ``n_overlays`` worst cases of the
            first method.
        n_overlays: how many worst cases to draw when ``overlay_cases`` is ``None`` (0: none).
        title: page title.
        figures_dir: also keep the PNGs there (``boxplots.png``, ``hd95_boxplots.png``,
            ``overlays/overlay_<case>.png``); ``None`` keeps them only inside the page.

    Returns:
        The path of ``report.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    named = normalize_results(results, methods)
    first = next(iter(named.values()))
    sections = [_heading_html(title), _warnings_html(named)]
    sections.append("".join(_counts_html(name, res) for name, res in named.items()))
    sections.extend(_tables_html(named))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(figures_dir) if figures_dir is not None else Path(tmp_name)
        sections.extend(_boxplots_html(named, tmp))
        sections.extend(_cases_html(named))
        cases = (
            list(overlay_cases)
            if overlay_cases is not None
            else [r["case"] for r in worst_cases(first, n_overlays)]
        )
        image_root = images_for_overlays if images_for_overlays is not None else first.ref
        sections.extend(_overlays_html(named, cases, image_root, tmp / "overlays"))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    return write_text_atomic(page, out_dir / "report.html")


def _heading_html(title: str) -> str:
    generated = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<h1>{html.escape(title)}</h1><p class="note">Generated {generated} by '
        "cascadeseg. Metrics as defined in docs/metrics.md (HD95 in mm, pooled 95th "
        "percentile of border distances, 373.13 mm when one mask is empty).</p>"
    )


def _tables_html(named: Mapping[str, EvaluationResult]) -> list[str]:
    """The method tables (with several methods) and each method's summary table."""
    sections = []
    if len(named) > 1:
        sections.append("<h2>Methods (mean per region)</h2>")
        table = method_table(named)
        sections.append(_method_table_html(table))
        sections.append(lesion_report.method_table_html(table))
    for name, res in named.items():
        sections.append(f"<h2>Summary: {html.escape(name)}</h2>")
        sections.append(_summary_table_html(res))
    return sections


def _plot_figures() -> dict[str, list[MetricSpec]]:
    """``{figure name: [metrics drawn in it]}`` from the metrics' ``plot``, in list order."""
    figures: dict[str, list[MetricSpec]] = {}
    for spec in METRICS:
        if spec.plot:
            figures.setdefault(spec.plot, []).append(spec)
    return figures


def _boxplots_html(named: Mapping[str, EvaluationResult], folder: Path) -> list[str]:
    """The box-plot figures (CU-Net Fig. 4), one ``<figure name>.png`` each in ``folder``."""
    columns = metric_columns()
    values = {name: {col: res.values(col) for col in columns} for name, res in named.items()}
    images = []
    for figure, specs in _plot_figures().items():
        path = boxplot_figure(values, folder / f"{figure}.png", metrics=[s.name for s in specs])
        images.append(_img(path, " and ".join(s.label for s in specs) + " box plots"))
    return [
        "<h2>Distributions</h2>",
        '<p class="note">Solid line: median; dotted line and diamond: mean (as in the CU-Net '
        "paper's Fig. 4).</p>",
        "".join(images),
    ]


def _cases_html(named: Mapping[str, EvaluationResult]) -> list[str]:
    """Each method's cases, worst first, and their lesions."""
    sections = []
    for name, res in named.items():
        sections.append(f"<h2>Cases, worst first: {html.escape(name)}</h2>")
        sections.append(_cases_table_html(res))
        if res.lesions:
            sections.append(f"<h2>Lesions per case: {html.escape(name)}</h2>")
            order = [r["case"] for r in worst_cases(res)]
            sections.append(lesion_report.cases_html(res.lesions, order))
    return sections


def _overlays_html(
    named: Mapping[str, EvaluationResult],
    cases: Sequence[str],
    image_root: str | os.PathLike[str] | None,
    folder: Path,
) -> list[str]:
    """The overlays of ``cases`` (CU-Net Fig. 3), written into ``folder``; none without cases."""
    if not cases:
        return []
    overlays = write_overlays(folder, named, cases, images=references_by_case(image_root))
    return [
        "<h2>Overlays</h2>",
        '<p class="note">Purple: non-tumour, blue: edema, yellow: enhancing tumour, '
        "green: necrosis (colours of the CU-Net paper's Fig. 3).</p>",
        *(_img(p, f"overlay {c}") for c, p in overlays.items()),
    ]
