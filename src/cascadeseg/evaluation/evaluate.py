"""Evaluate a folder of predicted label maps against references: ``metrics.csv`` + ``summary.json``.

Inputs:

* predictions: a flat folder of ``<case_id>.nii.gz`` (or ``.nii``, or ``<case_id>-seg`` /
  ``_seg``) integer label maps, in any label convention (see :func:`detect_convention`);
* references: either a dataset folder in any layout the readers know
  (``cascadeseg.data.layouts.discover_cases``: BraTS 2017-2021, 2023+, MSD, nnU-Net raw) or a flat
  folder of label maps ``<case_id>.nii.gz`` / ``<case_id>-seg.nii.gz`` / ``<case_id>_seg.nii.gz``
  (the official BraTS evaluation's convention), directly or one per case sub-folder.

Predictions are matched to references by case id (file names to case ids:
:mod:`cascadeseg.evaluation.matching`). A reference without prediction counts as an empty
prediction (Dice 0, HD95 373.13 where the reference is non-empty) and is listed as ``missing``; a
prediction that cannot be read, or whose shape or affine differs from its reference, is an
``error`` row with the reason (NaN metrics, left out of the summary), never a crash. Predictions
without reference are listed as ``unmatched``. Missing and failed cases, empty predictions and
predictions that overlap no reference are reported first (:mod:`cascadeseg.evaluation.checks`).

Outputs in ``out_dir``: ``metrics.csv`` (columns :func:`csv_columns`, with the lesion-wise
columns of :mod:`cascadeseg.evaluation.lesion_eval` after the volumes), ``summary.json``
(``status``, ``exit_code``, ``warnings``; mean, std, median, 25th and 75th percentiles per metric
and region; counts of cases and of NaN values left out), ``lesions.csv`` (one row per lesion) and
a table printed to stdout.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cascadeseg.data.labels import CONVENTIONS, to_internal
from cascadeseg.data.nifti import load_nifti
from cascadeseg.errors import InputError
from cascadeseg.evaluation import lesion_eval
from cascadeseg.evaluation.checks import (
    STATUS_ERROR,
    STATUS_MISSING,
    STATUS_OK,
    check_rows,
    format_warnings,
)
from cascadeseg.evaluation.matching import ReferenceItem, find_predictions, find_references
from cascadeseg.evaluation.metrics import METRIC_NAMES, VOLUME_NAMES, case_metrics, metric_columns
from cascadeseg.evaluation.tables import format_number, parse_float, write_csv
from cascadeseg.fsutil import write_json_atomic

#: Columns of ``metrics.csv`` after the metrics and volumes: the case status and where the values
#: came from.
CASE_COLUMNS: tuple[str, ...] = (
    "status",
    "pred_convention",
    "ref_convention",
    "pred_file",
    "ref_file",
    "message",
)
#: Statistics in ``summary.json`` and the printed table.
STATISTICS: tuple[str, ...] = ("mean", "std", "median", "q25", "q75")

# Affines are stored as float32 in NIfTI sform/qform: allow float32 round-off, nothing visible.
_AFFINE_ATOL_MM = 1e-3


def csv_columns() -> tuple[str, ...]:
    """Columns of ``metrics.csv`` without the lesion-wise ones (which follow the volumes).

    ``case``, the columns of every metric in :data:`~cascadeseg.evaluation.metrics.METRICS` (the
    12 BraTS ones first, in the order the issue fixes), the volumes in mL, :data:`CASE_COLUMNS`.
    """
    return ("case", *metric_columns(), *VOLUME_NAMES, *CASE_COLUMNS)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` computed and wrote.

    Attributes:
        out_dir: the output folder (``metrics.csv``, ``summary.json``).
        rows: one dict per case with the keys of :func:`csv_columns` (metrics as floats) and
            the lesion-wise columns.
        summary: the content of ``summary.json``.
        pred_dir: the prediction folder (``None`` when loaded from a CSV without it).
        ref: the reference folder.
        lesions: the rows of ``lesions.csv`` (one per lesion, region and rule set).
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    pred_dir: Path | None = None
    ref: Path | None = None
    lesions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metrics_csv(self) -> Path:
        return self.out_dir / "metrics.csv"

    @property
    def summary_json(self) -> Path:
        return self.out_dir / "summary.json"

    @property
    def missing(self) -> list[str]:
        """Cases whose prediction was missing (scored as empty)."""
        return [r["case"] for r in self.rows if r["status"] == STATUS_MISSING]

    @property
    def errors(self) -> dict[str, str]:
        """Cases that could not be evaluated, with the reason."""
        return {r["case"]: r["message"] for r in self.rows if r["status"] == STATUS_ERROR}

    def scored_rows(self) -> list[dict[str, Any]]:
        """Rows that enter the statistics (evaluated and missing; not errors)."""
        return [r for r in self.rows if r["status"] != STATUS_ERROR]

    def values(self, metric: str) -> np.ndarray:
        """``(N,)`` float64 values of ``metric`` over the scored rows (NaN kept)."""
        rows = self.scored_rows()
        return np.array([float(r.get(metric, math.nan)) for r in rows], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Label conventions


def _present_values(label: np.ndarray) -> set[int]:
    """The distinct values of an integer label map (cheap for the usual 0-4 range)."""
    label = np.asarray(label)
    if label.dtype.kind == "f" or label.size == 0:
        return {int(v) for v in np.unique(label)}
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi > 16:
        return {int(v) for v in np.unique(label)}
    # One comparison pass per candidate value beats np.unique's sort of 9M voxels (~10x).
    return {v for v in range(lo, hi + 1) if v in (lo, hi) or bool(np.any(label == v))}


def detect_convention(values: Iterable[int], reference_convention: str | None = None) -> str:
    """Guess the label convention of a label map from the values it holds.

    Rule (label values cannot tell every convention apart, so the rule is fixed and documented):

    1. If every value is allowed in ``reference_convention`` (the convention of the reference this
       map is compared with), that convention is used: a prediction is assumed to follow its
       reference unless its values prove otherwise.
    2. Otherwise: a 4 without a 3 -> ``brats2021`` (ET = 4); a 3 without a 4 -> ``brats2023``;
       both 3 and 4 -> ``brats2024`` (4 = resection cavity); only values in {0, 1, 2} ->
       ``brats2021`` (1 = NCR and 2 = ED in both BraTS conventions, so this is not a guess).

    Ambiguities that values cannot resolve, where the caller must name the convention:
    MSD / nnU-Net BraTS maps (1 = edema, 2 = necrosis) look like ``brats2023``; a BraTS 2021 map
    compared with a BraTS 2024 reference has its 4 read as resection cavity.

    Args:
        values: the distinct values of the map.
        reference_convention: convention of the reference, or ``None``.

    Returns:
        A key of :data:`cascadeseg.data.labels.CONVENTIONS`.

    Raises:
        InputError: a value outside 0-4.
    """
    present = set(int(v) for v in values)
    if reference_convention is not None:
        allowed = set(CONVENTIONS[reference_convention].to_internal)
        if present <= allowed:
            return reference_convention
    bad = sorted(v for v in present if v < 0 or v > 4)
    if bad:
        raise InputError(f"label values {bad[:10]} fit no known convention (allowed 0-4)")
    if 3 in present and 4 in present:
        return "brats2024"
    if 3 in present:
        return "brats2023"
    return "brats2021"


# --------------------------------------------------------------------------------------------
# One case


def _read_label(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    array, affine, header = load_nifti(path)
    if array.ndim == 4 and array.shape[3] == 1:  # some tools write (X, Y, Z, 1)
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"{path}: expected a 3D label map, got shape {array.shape}")
    zooms = header.get_zooms()[:3]
    spacing = (float(zooms[0]), float(zooms[1]), float(zooms[2]))
    return array, affine, spacing


def _nan_metrics() -> dict[str, float]:
    return {name: math.nan for name in (*metric_columns(), *VOLUME_NAMES)}


def evaluate_case(
    pred_path: Path | None,
    reference: ReferenceItem,
    pred_convention: str | None = None,
    lesion_rules: str = lesion_eval.DEFAULT_LESION_RULES,
    challenge: str = "GLI",
) -> dict[str, Any]:
    """One row of ``metrics.csv``: read, convert, check geometry, compute :func:`case_metrics`.

    Never raises for a problem with the case's files: the row's ``status`` is ``error`` and
    ``message`` says why (metrics NaN).

    Args:
        pred_path: the prediction file, or ``None`` when it is missing (scored as empty).
        reference: the reference.
        pred_convention: the prediction's convention, or ``None`` to detect it.
        lesion_rules: lesion-wise rule sets (``panoptica``, ``brats2023``, ``both``, ``none``).
        challenge: BraTS 2023 challenge whose dilation and size threshold the brats2023 rules use.
    """
    row: dict[str, Any] = {
        "case": reference.case_id,
        **_nan_metrics(),
        "status": STATUS_OK,
        "pred_convention": "",
        "ref_convention": "",
        "pred_file": "" if pred_path is None else str(pred_path),
        "ref_file": str(reference.seg),
        "message": "",
        # Not a CSV column: which file failed (a folder whose references all fail is an input
        # error, not a batch of failed cases).
        "error_source": "",
    }
    try:
        row["error_source"] = "reference"
        ref_raw, ref_affine, spacing = _read_label(reference.seg)
        ref_conv = reference.convention or detect_convention(_present_values(ref_raw))
        ref_label = to_internal(ref_raw, ref_conv, source=str(reference.seg))
        row["ref_convention"] = ref_conv
        pred_raw: np.ndarray | None = None
        if pred_path is None:
            pred_label = np.zeros_like(ref_label)
            row["status"] = STATUS_MISSING
            row["message"] = "no prediction: scored as an empty label map"
        else:
            row["error_source"] = "prediction"
            pred_raw, pred_affine, _ = _read_label(pred_path)
            if pred_raw.shape != ref_raw.shape:
                raise InputError(
                    f"{pred_path}: shape {pred_raw.shape} differs from the reference's "
                    f"{ref_raw.shape} ({reference.seg})"
                )
            if not np.allclose(pred_affine, ref_affine, rtol=0.0, atol=_AFFINE_ATOL_MM):
                raise InputError(
                    f"{pred_path}: affine differs from the reference's ({reference.seg}); "
                    "predictions must be on the reference grid"
                )
            pred_conv = pred_convention or detect_convention(_present_values(pred_raw), ref_conv)
            pred_label = to_internal(pred_raw, pred_conv, source=str(pred_path))
            row["pred_convention"] = pred_conv
        row.update(case_metrics(pred_label, ref_label, spacing))
        row["error_source"] = ""
        rules = lesion_eval.rule_sets(lesion_rules)
        if rules:
            figures, records = lesion_eval.case_lesion_figures(
                pred_label, ref_label, spacing, rules=rules, ref_convention=ref_conv,
                pred_convention=row["pred_convention"] or None, challenge=challenge,
                pred_raw=pred_raw, ref_raw=ref_raw, affine=ref_affine,
            )  # fmt: skip
            row.update(figures)
            row[lesion_eval.RECORDS_KEY] = records
    except Exception as exc:  # one bad case must not stop a folder; the row says what happened
        row.update(_nan_metrics())
        lesion_eval.clear_lesion_figures(row)
        row["status"] = STATUS_ERROR
        text = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
        row["message"] = " ".join(text.split())  # one line per case in the console and the CSV
    return row


def _evaluate_task(task: tuple[Path | None, ReferenceItem, str | None, str, str]) -> dict[str, Any]:
    return evaluate_case(*task)


# --------------------------------------------------------------------------------------------
# Summary, CSV, JSON


def _stats(values: np.ndarray) -> dict[str, float | int]:
    finite = values[~np.isnan(values)]
    out: dict[str, float | int] = {"n": int(finite.size), "n_nan": int(values.size - finite.size)}
    if finite.size == 0:
        out.update({name: math.nan for name in STATISTICS})
        return out
    q25, median, q75 = np.percentile(finite, [25, 50, 75])
    out["mean"] = float(finite.mean())
    # Sample standard deviation (ddof=1), as pandas and the BraTS ranking spreadsheets report.
    out["std"] = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    out["median"], out["q25"], out["q75"] = float(median), float(q25), float(q75)
    return out


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of every metric over the scored rows (``ok`` and ``missing``).

    Returns:
        ``{"metrics": {name: {n, n_nan, mean, std, median, q25, q75}}, "volumes": {...},
        "cases": {n, ok, missing, error}, "missing": [...], "errors": {case: message}}``.
        ``n_nan`` counts the values left out as NaN (sensitivity with an empty reference,
        specificity without reference negatives).
    """
    scored = [r for r in rows if r["status"] != STATUS_ERROR]

    def column(name: str) -> np.ndarray:
        # A metrics.csv written before a metric was registered lacks its column: NaN.
        return np.array([float(r.get(name, math.nan)) for r in scored], dtype=np.float64)

    return {
        "metrics": {name: _stats(column(name)) for name in metric_columns()},
        "volumes": {name: _stats(column(name)) for name in VOLUME_NAMES},
        "lesions": lesion_eval.summarize_lesions(scored, _stats),
        "cases": {
            "n": len(rows),
            "ok": sum(r["status"] == STATUS_OK for r in rows),
            "missing": sum(r["status"] == STATUS_MISSING for r in rows),
            "error": sum(r["status"] == STATUS_ERROR for r in rows),
        },
        "missing": [r["case"] for r in rows if r["status"] == STATUS_MISSING],
        "errors": {r["case"]: r["message"] for r in rows if r["status"] == STATUS_ERROR},
    }


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> ``None`` (JSON has no NaN), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_metrics_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write rows with :func:`csv_columns` (NaN written as ``NaN``), atomically."""
    columns = lesion_eval.with_lesion_columns(csv_columns(), rows, after=VOLUME_NAMES[-1])
    return write_csv(rows, columns, path)


def read_metrics_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv`` (metrics and volumes as floats, the rest as strings).

    Raises:
        InputError: the file is missing or lacks the 12 BraTS metric columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: metrics.csv not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        lacking = [c for c in ("case", *METRIC_NAMES) if c not in header]
        if lacking:
            raise InputError(f"{path}: not a metrics.csv (missing columns {lacking})")
        rows = []
        for raw in reader:
            row: dict[str, Any] = dict(raw)
            lesion_cols = [k for k in row if lesion_eval.is_lesion_column(k)]
            for name in (*metric_columns(), *VOLUME_NAMES, *lesion_cols):
                if name in row:
                    row[name] = parse_float(row[name])
            row.setdefault("status", STATUS_OK)
            row["status"] = row["status"] or STATUS_OK
            rows.append(row)
    return rows


def load_evaluation(
    folder: str | os.PathLike[str], *, allow_missing: bool | None = None
) -> EvaluationResult:
    """An :class:`EvaluationResult` from a folder written by :func:`evaluate`.

    ``allow_missing`` decides whether missing predictions set the exit code (``None``: as the
    folder was evaluated; ``compare`` passes its own).
    """
    folder = Path(folder)
    rows = read_metrics_csv(folder / "metrics.csv")
    if not rows:
        raise InputError(f"{folder / 'metrics.csv'}: no cases in the file")
    summary = summarize(rows)
    pred_dir = ref = None
    saved: dict[str, Any] = {}
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        try:
            saved = json.loads(summary_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{summary_path}: not a readable summary.json ({exc})") from exc
        if not isinstance(saved, dict):
            raise InputError(f"{summary_path}: not a summary.json (no JSON object)")
        source = saved.get("source") or {}
        pred_dir = Path(source["pred_dir"]) if source.get("pred_dir") else None
        ref = Path(source["ref"]) if source.get("ref") else None
        summary["source"] = source
    summary["unmatched_predictions"] = list(saved.get("unmatched_predictions") or [])
    summary.update(
        check_rows(
            rows,
            summary["unmatched_predictions"],
            allow_missing=bool(saved.get("allow_missing", False))
            if allow_missing is None
            else allow_missing,
        )
    )
    lesions = lesion_eval.read_lesions_csv(folder / "lesions.csv")
    return EvaluationResult(folder, rows, summary, pred_dir, ref, lesions)


def format_summary_table(summary: dict[str, Any]) -> str:
    """A plain-text table: one line per metric with mean, std, median, q25, q75, n (NaN)."""
    lines = [
        f"{'metric':<10}{'mean':>10}{'std':>10}{'median':>10}{'q25':>10}{'q75':>10}{'n':>6}"
        f"{'NaN':>6}"
    ]
    for name, stats in summary["metrics"].items():
        cells = "".join(f"{format_number(stats[s], 4):>10}" for s in STATISTICS)
        lines.append(f"{name:<10}{cells}{stats['n']:>6}{stats['n_nan']:>6}")
    if summary.get("lesions"):
        lines.append(lesion_eval.format_lesion_table(summary["lesions"]))
    cases = summary["cases"]
    lines.append(
        f"cases: {cases['n']} ({cases['ok']} evaluated, {cases['missing']} missing predictions "
        f"scored as empty, {cases['error']} errors)"
    )
    return "\n".join(lines)


def format_console_summary(summary: dict[str, Any]) -> str:
    """What ``evaluate`` prints: warnings first, the table, then one line per failed case."""
    parts = [format_warnings(summary), format_summary_table(summary)]
    parts.extend(f"error: {case}: {message}" for case, message in summary["errors"].items())
    return "\n".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------
# The folder


def evaluate(
    pred_dir: str | os.PathLike[str],
    ref: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    ref_layout: str | None = None,
    ref_convention: str | None = None,
    pred_convention: str | None = None,
    workers: int = 2,
    progress: bool = True,
    print_table: bool = True,
    allow_missing: bool = False,
    lesion_rules: str = lesion_eval.DEFAULT_LESION_RULES,
    challenge: str = "GLI",
) -> EvaluationResult:
    """BraTS metrics of every reference case; writes ``metrics.csv`` and ``summary.json``.

    Args:
        pred_dir: folder of ``<case_id>.nii.gz`` label maps (any label convention; see
            :func:`~cascadeseg.evaluation.matching.find_predictions`).
        ref: dataset folder (any layout the readers know) or flat folder of label maps (see
            :func:`~cascadeseg.evaluation.matching.find_references`).
        out_dir: output folder (created).
        ref_layout: see :func:`find_references`.
        ref_convention: the references' label convention (``None``: from the layout or detected).
        pred_convention: the predictions' label convention (``None``: detected per case by
            :func:`detect_convention`, preferring the reference's).
        workers: processes (the cases are independent; 2 uses both cores of a small machine;
            1 runs in this process).
        progress: show a progress bar.
        print_table: print the summary (warnings first, the table, failed cases).
        allow_missing: missing predictions leave ``summary["exit_code"]`` at 0 (they are still
            scored as empty and listed).
        lesion_rules: ``panoptica`` (official package, default), ``brats2023``, ``both``, ``none``.
        challenge: the BraTS 2023 challenge (GLI, SSA, PED, MEN, MET) for ``brats2023``.

    Returns:
        The :class:`EvaluationResult` (rows in reference order); ``summary["status"]``,
        ``["exit_code"]`` and ``["warnings"]`` say whether it is complete
        (:mod:`cascadeseg.evaluation.checks`).

    Raises:
        InputError: a folder is missing or holds no label maps, no reference label map could be
            read, or a convention or lesion option is unknown.
    """
    for name in (ref_convention, pred_convention):
        if name is not None and name not in CONVENTIONS:
            raise InputError(f"unknown label convention {name!r} (known: {sorted(CONVENTIONS)})")
    pred_dir, ref, out_dir = Path(pred_dir), Path(ref), Path(out_dir)
    references = find_references(ref, ref_layout=ref_layout, ref_convention=ref_convention)
    predictions = find_predictions(pred_dir)
    ref_ids = {item.case_id for item in references}
    unmatched = sorted(set(predictions) - ref_ids)
    lesion_eval.check_options(lesion_rules, challenge)  # before any work
    extra = (pred_convention, lesion_rules, challenge)
    tasks = [(predictions.get(item.case_id), item, *extra) for item in references]
    rows = _evaluate_tasks(tasks, workers, progress)
    _check_references_readable(rows, ref)
    lesion_records = lesion_eval.pop_records(rows)  # written to lesions.csv below

    summary = {
        **check_rows(rows, unmatched, allow_missing=allow_missing),
        **summarize(rows),
        "unmatched_predictions": unmatched,
        "source": {
            "pred_dir": str(pred_dir.resolve()),
            "ref": str(ref.resolve()),
            "ref_layout": references[0].layout,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(rows, out_dir / "metrics.csv")
    write_json_atomic(_json_safe(summary), out_dir / "summary.json")
    lesion_eval.write_lesions_csv(lesion_records, out_dir / "lesions.csv", lesion_rules)
    if print_table:
        print(format_console_summary(summary))
    return EvaluationResult(out_dir, rows, summary, pred_dir, ref, lesion_records)


def _evaluate_tasks(
    tasks: list[tuple[Path | None, ReferenceItem, str | None, str, str]],
    workers: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Rows of :func:`evaluate_case` for every task, in order, in ``workers`` processes."""
    bar = tqdm(total=len(tasks), desc="evaluate", unit="case", disable=not progress)
    rows: list[dict[str, Any]]
    if workers <= 1 or len(tasks) <= 1:
        rows = []
        for task in tasks:
            rows.append(_evaluate_task(task))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
            rows = []
            for row in pool.map(_evaluate_task, tasks, chunksize=1):
                rows.append(row)
                bar.update()
    bar.close()
    return rows


def _check_references_readable(rows: Sequence[dict[str, Any]], ref: Path) -> None:
    """A reference folder none of whose label maps can be read is an input error, not a batch.

    Raises:
        InputError: every row failed on its reference file (names the first file and why).
    """
    if rows and all(r["error_source"] == "reference" for r in rows):
        raise InputError(
            f"{ref}: none of the {len(rows)} reference label maps could be read "
            f"(first: {rows[0]['message']})"
        )
