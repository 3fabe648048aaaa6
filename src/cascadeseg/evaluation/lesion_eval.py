"""Lesion-wise figures inside ``cascadeseg evaluate``: columns, regions, ``lesions.csv``, summary.

The arithmetic lives in :mod:`cascadeseg.evaluation.lesions`; this module decides which regions a
case has, names the ``metrics.csv`` columns, flattens per-lesion records into ``lesions.csv`` rows
and summarises the columns.

Columns of ``metrics.csv`` (after the volumes), per region ``r`` in ``wt, tc, et`` (and ``netc,
snfh`` for BraTS 2023+ label maps, ``rc`` for BraTS 2024 post-treatment maps):

* ``lesion_{tp,fp,fn,f1,dice,hd95,nsd}_<r>``: the official package's rules (``panoptica``);
* ``lesion23_{tp,fp,fn,f1,dice,hd95}_<r>``: the BraTS 2023 ranking rules (``brats2023``).

``--lesion-rules`` picks ``panoptica`` (default: the rules of the current official package,
``brats-evaluate``), ``brats2023``, ``both`` or ``none``. A column's name never depends on the
choice, so runs made with different choices still compare column by column.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascadeseg.data.labels import ED, ET, NCR
from cascadeseg.errors import InputError
from cascadeseg.evaluation.lesions import Lesion, challenge_parameters, lesion_matching_rule_sets
from cascadeseg.evaluation.tables import format_number, parse_float, write_csv

#: Lesion-wise figures per region, in column order.
LESION_FIGURES: tuple[str, ...] = ("tp", "fp", "fn", "f1", "dice", "hd95", "nsd")
#: Column prefix of each rule set.
RULE_PREFIX: dict[str, str] = {"panoptica": "lesion", "brats2023": "lesion23"}
#: Values of ``--lesion-rules``.
LESION_RULE_CHOICES: tuple[str, ...] = ("panoptica", "brats2023", "both", "none")
#: The official package's rules: what the current BraTS leaderboards (``brats-evaluate``) use.
DEFAULT_LESION_RULES = "panoptica"
#: Every region a case may have, in column order.
ALL_REGIONS: tuple[str, ...] = ("WT", "TC", "ET", "NETC", "SNFH", "RC")
#: Key under which :func:`case_lesion_figures`' records travel in a row until ``lesions.csv``.
RECORDS_KEY = "_lesion_records"
_CENTROID_VOXEL = ("centroid_i", "centroid_j", "centroid_k")
_CENTROID_MM = ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")
#: Columns of ``lesions.csv``.
LESIONS_CSV_COLUMNS: tuple[str, ...] = (
    "case",
    "rules",
    "region",
    "source",
    "lesion_id",
    "voxels",
    "volume_ml",
    *_CENTROID_VOXEL,
    *_CENTROID_MM,
    "status",
    "dice",
    "hd95",
    "partners",
)
_COLUMN_RE = re.compile(r"^(lesion|lesion23)_(tp|fp|fn|f1|dice|hd95|nsd)_([a-z]+)$")
_FLOAT_FIELDS: tuple[str, ...] = ("volume_ml", *_CENTROID_VOXEL, *_CENTROID_MM, "dice", "hd95")


def rule_sets(choice: str) -> tuple[str, ...]:
    """The rule sets of a ``--lesion-rules`` value (``both`` -> both, ``none`` -> none)."""
    if choice not in LESION_RULE_CHOICES:
        raise InputError(
            f"unknown lesion rules {choice!r} (choose from {', '.join(LESION_RULE_CHOICES)})"
        )
    if choice == "both":
        return ("panoptica", "brats2023")
    return () if choice == "none" else (choice,)


def check_options(lesion_rules: str, challenge: str) -> None:
    """Raise :class:`InputError` for unknown lesion rules, or a challenge the rules do not know."""
    if not rule_sets(lesion_rules):
        return
    try:
        challenge_parameters(challenge)
    except ValueError as exc:
        raise InputError(f"--challenge: {exc}") from None


def lesion_column(rules: str, figure: str, region: str) -> str:
    """``metrics.csv`` column of one figure, e.g. ``lesion_dice_wt`` or ``lesion23_hd95_et``."""
    return f"{RULE_PREFIX[rules]}_{figure}_{region.lower()}"


def is_lesion_column(name: str) -> bool:
    return _COLUMN_RE.match(name) is not None


def regions_for(convention: str) -> tuple[str, ...]:
    """Regions scored for a reference in ``convention``: WT, TC, ET, plus the 2023+ labels."""
    if convention == "brats2024":
        return ALL_REGIONS
    if convention == "brats2023":
        return ALL_REGIONS[:5]
    return ALL_REGIONS[:3]


def region_mask(
    region: str, internal: np.ndarray, raw: np.ndarray | None, convention: str
) -> np.ndarray:
    """Binary mask of ``region`` from an internal label map (RC: from the raw BraTS 2024 map)."""
    if region == "WT":
        return internal > 0
    if region == "TC":
        return (internal == NCR) | (internal == ET)
    if region == "ET":
        return internal == ET
    if region == "NETC":
        return internal == NCR
    if region == "SNFH":
        return internal == ED
    if region == "RC":
        if raw is None or convention != "brats2024":
            return np.zeros(internal.shape, dtype=bool)
        return np.asarray(raw) == 4
    raise ValueError(f"unknown region {region!r}")


def case_lesion_figures(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    rules: Sequence[str],
    ref_convention: str,
    pred_convention: str | None = None,
    challenge: str = "GLI",
    pred_raw: np.ndarray | None = None,
    ref_raw: np.ndarray | None = None,
    affine: np.ndarray | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Lesion-wise columns and per-lesion records of one case.

    Args:
        pred: ``(X, Y, Z)`` internal label map of the prediction.
        ref: ``(X, Y, Z)`` internal label map of the reference.
        spacing: voxel size in mm.
        rules: rule sets to compute (see :func:`rule_sets`).
        ref_convention: the reference's label convention (decides the regions).
        pred_convention: the prediction's convention (RC needs ``brats2024``).
        challenge: BraTS 2023 challenge for the brats2023 rules (GLI, SSA, PED, MEN, MET).
        pred_raw, ref_raw: the maps in their own conventions (for RC only).
        affine: voxel-to-world matrix for the lesions' centroids in mm.

    Returns:
        ``({column: value}, [lesions.csv row without "case"])``.
    """
    figures: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    regions = regions_for(ref_convention)
    preds = {r: region_mask(r, pred, pred_raw, pred_convention or ref_convention) for r in regions}
    refs = {r: region_mask(r, ref, ref_raw, ref_convention) for r in regions}
    # One call for every rule set: the union of the masks is labelled once for all of them.
    by_rules = lesion_matching_rule_sets(
        preds, refs, spacing, rule_sets=rules, challenge=challenge, affine=affine
    )
    for rule, results in by_rules.items():
        for region, result in results.items():
            values = (result.tp, result.fp, result.fn, result.f1, result.dice, result.hd95)
            for figure, value in zip(LESION_FIGURES, values):
                figures[lesion_column(rule, figure, region)] = float(value)
            if rule == "panoptica":  # the package reports NSD; the 2023 code has none
                figures[lesion_column(rule, "nsd", region)] = float(result.nsd)
            records.extend(_record(rule, region, les) for les in result.lesions)
    return figures, records


def _record(rule: str, region: str, les: Lesion) -> dict[str, Any]:
    """One ``lesions.csv`` row (without ``case``)."""
    return {
        "rules": rule,
        "region": region,
        "source": les.source,
        "lesion_id": les.id,
        "voxels": les.voxels,
        "volume_ml": les.volume_ml,
        **dict(zip(_CENTROID_VOXEL, les.centroid_voxel)),
        **dict(zip(_CENTROID_MM, les.centroid_mm)),
        "status": les.status,
        "dice": les.dice,
        "hd95": les.hd95,
        "partners": " ".join(str(i) for i in les.partners),
    }


def clear_lesion_figures(row: dict[str, Any]) -> None:
    """Set a failed row's lesion columns to NaN and drop its records."""
    for key in [k for k in row if is_lesion_column(k)]:
        row[key] = math.nan
    row.pop(RECORDS_KEY, None)


def pop_records(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Take the per-lesion records out of the rows, as ``lesions.csv`` rows (with ``case``)."""
    out = []
    for row in rows:
        for rec in row.pop(RECORDS_KEY, None) or []:
            out.append({"case": row["case"], **rec})
    return out


def lesion_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The lesion columns present in any row, ordered by rule set, figure, then region."""
    present = {k for row in rows for k in row if is_lesion_column(k)}
    return [
        lesion_column(rule, figure, region)
        for rule in RULE_PREFIX
        for figure in LESION_FIGURES
        for region in ALL_REGIONS
        if lesion_column(rule, figure, region) in present
    ]


def with_lesion_columns(
    columns: Sequence[str], rows: Sequence[dict[str, Any]], after: str
) -> list[str]:
    """``columns`` with the rows' lesion columns inserted after the column ``after``."""
    extra = lesion_columns(rows)
    base = [c for c in columns if not is_lesion_column(c)]
    at = base.index(after) + 1 if after in base else len(base)
    return base[:at] + extra + base[at:]


def write_lesions_csv(
    records: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    lesion_rules: str = DEFAULT_LESION_RULES,
) -> Path | None:
    """Write ``lesions.csv`` (columns :data:`LESIONS_CSV_COLUMNS`) atomically.

    Nothing is written (``None``) when ``lesion_rules`` is ``none``.
    """
    if not rule_sets(lesion_rules):
        return None
    return write_csv(records, LESIONS_CSV_COLUMNS, path, significant=6)


def read_lesions_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``lesions.csv`` (numbers as floats / ints); empty when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows: list[dict[str, Any]] = [dict(r) for r in csv.DictReader(f)]
    for row in rows:
        for key in _FLOAT_FIELDS:
            if key in row:
                row[key] = parse_float(row[key])
        for key in ("lesion_id", "voxels"):
            if row.get(key, "") != "":
                row[key] = int(row[key])
    return rows


def summarize_lesions(
    rows: Sequence[dict[str, Any]], stats: Any
) -> dict[str, dict[str, float | int]]:
    """``{column: stats(values)}`` for the lesion columns, plus ``total_*`` sums of tp/fp/fn.

    Args:
        rows: the scored rows.
        stats: the statistics function of :mod:`cascadeseg.evaluation.evaluate` (NaN left out).
    """
    out: dict[str, Any] = {}
    for col in lesion_columns(rows):
        values = np.array([float(r.get(col, math.nan)) for r in rows], dtype=np.float64)
        out[col] = stats(values)
        if col.split("_")[1] in ("tp", "fp", "fn"):
            out[col]["total"] = int(np.nansum(values))
    return out


def format_lesion_table(lesion_summary: dict[str, dict[str, Any]]) -> str:
    """Console lines: per rule set and region, mean lesion-wise Dice / HD95 / F1 and tp/fp/fn."""
    if not lesion_summary:
        return ""
    lines = [f"{'lesion-wise':<16}{'Dice':>8}{'HD95':>9}{'F1':>8}{'TP':>6}{'FP':>6}{'FN':>6}"]
    for rule, prefix in RULE_PREFIX.items():
        for region in ALL_REGIONS:
            keys = {fig: f"{prefix}_{fig}_{region.lower()}" for fig in LESION_FIGURES[:6]}
            if any(k not in lesion_summary for k in keys.values()):
                continue
            stats = {fig: lesion_summary[k] for fig, k in keys.items()}
            cells = "".join(
                f"{format_number(stats[f]['mean'], 4):>{w}}"
                for f, w in (("dice", 8), ("hd95", 9), ("f1", 8))
            )
            counts = "".join(f"{stats[f].get('total', 0):>6}" for f in ("tp", "fp", "fn"))
            lines.append(f"{rule + ' ' + region:<16}{cells}{counts}")
    return "\n".join(lines)
