"""What an evaluation must say before its numbers: missing, failed and suspicious results.

A table of means looks the same whether every prediction was scored or none was found. These
checks turn the per-case rows into an overall ``status``, the exit code of ``cascadeseg
evaluate`` / ``compare`` and a list of ``warnings`` (plain sentences) that the console summary,
``report.html`` and ``summary.json`` show first:

* predictions missing (scored as empty, the BraTS convention): status ``incomplete``, exit 1
  unless missing predictions are allowed (``--allow-missing``);
* cases that could not be evaluated (unreadable file, other grid): status ``failed``, exit 1;
* every prediction empty, or no prediction overlapping its reference anywhere (a wrong
  reference set or orientation), predictions without reference, predictions that are the
  reference files themselves: warnings only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Status of a row: evaluated, prediction missing (scored as empty), or not evaluated.
STATUS_OK, STATUS_MISSING, STATUS_ERROR = "ok", "missing", "error"
#: Overall status of an evaluation (``summary.json``'s ``status``).
RUN_OK, RUN_INCOMPLETE, RUN_FAILED = "ok", "incomplete", "failed"
#: Case ids named in one warning before "... and N more".
_LISTED = 10


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" ... and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _cases(n: int, what: str = "case") -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _value(row: Mapping[str, Any], key: str) -> float:
    try:
        return float(row.get(key, math.nan))
    except (TypeError, ValueError):
        return math.nan


def _same_file(row: Mapping[str, Any]) -> bool:
    pred, ref = row.get("pred_file"), row.get("ref_file")
    return bool(pred) and bool(ref) and Path(str(pred)).resolve() == Path(str(ref)).resolve()


def _content_warnings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Warnings about what the scored predictions hold (empty everywhere, no overlap anywhere).

    Read from the whole-tumour (WT) volumes in mL and Dice of the evaluated rows.
    """
    scored = [r for r in rows if r.get("status") == STATUS_OK]
    if not scored:
        return []
    predicted = [r for r in scored if _value(r, "vol_wt_pred_ml") > 0]
    with_tumour = [r for r in scored if _value(r, "vol_wt_ref_ml") > 0]
    if not predicted:
        if not with_tumour:
            return []
        return [
            f"every prediction is empty: no tumour voxel in the {_cases(len(scored))} evaluated; "
            "check that the right model and prediction folder were used"
        ]
    if any(_value(r, "dice_wt") > 0 for r in predicted):
        return []
    return [
        f"no prediction overlaps its reference's tumour in the {_cases(len(scored))} evaluated "
        "(whole-tumour Dice 0 everywhere): check that the references are the right set for "
        "these predictions (same cases, same grid and orientation)"
    ]


def result_warnings(
    rows: Sequence[Mapping[str, Any]],
    unmatched: Sequence[str] = (),
    *,
    allow_missing: bool = False,
) -> list[str]:
    """Plain-sentence warnings about an evaluation, the most important first.

    Args:
        rows: the per-case rows (``case``, ``status``, ``message``, files, metrics, volumes).
        unmatched: predictions (case ids) that have no reference.
        allow_missing: missing predictions were allowed (said in the warning).
    """
    warnings: list[str] = []
    missing = [str(r["case"]) for r in rows if r.get("status") == STATUS_MISSING]
    if missing:
        every = "every one" if len(missing) == len(rows) else f"{len(missing)}"
        verdict = (
            "allowed by --allow-missing"
            if allow_missing
            else "the evaluation is incomplete (exit status 1; --allow-missing accepts it)"
        )
        warnings.append(
            f"no prediction for {every} of the {_cases(len(rows), 'reference case')}, scored as "
            "empty "
            f"(BraTS convention); {verdict}: {_names(missing)}"
        )
    failed = [str(r["case"]) for r in rows if r.get("status") == STATUS_ERROR]
    if failed:
        warnings.append(
            f"{len(failed)} of the {_cases(len(rows))} could not be evaluated (left out of the "
            f"statistics): {_names(failed)}"
        )
    warnings.extend(_content_warnings(rows))
    if unmatched:
        warnings.append(
            f"predictions without a reference, not evaluated ({len(unmatched)}): "
            f"{_names(list(unmatched))}"
        )
    same = [str(r["case"]) for r in rows if _same_file(r)]
    if same:
        warnings.append(
            f"predictions that are the reference files themselves ({len(same)}): {_names(same)}"
        )
    return warnings


def run_status(rows: Sequence[Mapping[str, Any]], *, allow_missing: bool = False) -> dict[str, Any]:
    """``{"status", "exit_code", "allow_missing"}`` of an evaluation.

    ``status``: ``failed`` when a case could not be evaluated, else ``incomplete`` when a
    prediction is missing, else ``ok``. ``exit_code``: 1 for ``failed``, and for ``incomplete``
    unless ``allow_missing``; 0 otherwise.
    """
    statuses = {r.get("status") for r in rows}
    if STATUS_ERROR in statuses:
        status, code = RUN_FAILED, 1
    elif STATUS_MISSING in statuses:
        status, code = RUN_INCOMPLETE, 0 if allow_missing else 1
    else:
        status, code = RUN_OK, 0
    return {"status": status, "exit_code": code, "allow_missing": bool(allow_missing)}


def check_rows(
    rows: Sequence[Mapping[str, Any]],
    unmatched: Sequence[str] = (),
    *,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """The entries :func:`run_status` and :func:`result_warnings` add to ``summary.json``."""
    return {
        **run_status(rows, allow_missing=allow_missing),
        "warnings": result_warnings(rows, unmatched, allow_missing=allow_missing),
    }


def format_warnings(summary: Mapping[str, Any]) -> str:
    """``WARNING: ...`` lines of a summary (empty string when there is nothing to say)."""
    return "\n".join(f"WARNING: {w}" for w in summary.get("warnings", []))
