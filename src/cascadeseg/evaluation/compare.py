"""Compare several methods: a table like the CU-Net paper's Table 1, box plots, overlays, report.

Each run is either an evaluation folder (one written by :func:`~cascadeseg.evaluation.evaluate`,
with ``metrics.csv``) or a folder of predicted label maps, which is evaluated first against the
reference given (into ``<out>/evaluations/<name>``).

Outputs in ``out_dir``: ``table.md`` and ``table.csv`` (mean Dice / Sens / Spec and HD95 per
region per method), ``boxplots.png`` and ``hd95_boxplots.png`` (CU-Net Fig. 4, methods side by
side), ``overlays/overlay_<case>.png`` (CU-Net Fig. 3) and ``report.html``.

A method with missing predictions (scored as empty) or failed cases is named in
:attr:`ComparisonResult.warnings`, at the top of the report, and makes
:attr:`ComparisonResult.exit_code` 1 (missing ones unless ``allow_missing``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cascadeseg.errors import InputError
from cascadeseg.evaluation.evaluate import EvaluationResult, evaluate, load_evaluation
from cascadeseg.evaluation.matching import find_predictions
from cascadeseg.evaluation.report import (
    method_table,
    method_table_markdown,
    normalize_results,
    write_report,
)
from cascadeseg.evaluation.tables import write_csv


@dataclass
class ComparisonResult:
    """What :func:`compare` wrote.

    Attributes:
        out_dir: the output folder.
        results: method name -> evaluation.
        table: the rows of ``table.csv`` (see :func:`~cascadeseg.evaluation.report.method_table`).
        report: path of ``report.html``.
    """

    out_dir: Path
    results: dict[str, EvaluationResult]
    table: list[dict[str, object]]
    report: Path

    @property
    def warnings(self) -> list[str]:
        """Every method's warnings, each prefixed with the method's name."""
        return [
            f"{name}: {warning}"
            for name, res in self.results.items()
            for warning in res.summary.get("warnings", [])
        ]

    @property
    def exit_code(self) -> int:
        """1 when any method has missing (not allowed) or failed cases, else 0."""
        return max((int(r.summary.get("exit_code", 0)) for r in self.results.values()), default=0)

    @property
    def table_md(self) -> Path:
        return self.out_dir / "table.md"

    @property
    def table_csv(self) -> Path:
        return self.out_dir / "table.csv"


#: Files only an evaluation folder holds: one with them but without ``metrics.csv`` is broken.
_EVALUATION_FILES = ("summary.json", "report.html")


def _is_evaluation(folder: Path) -> bool:
    return (folder / "metrics.csv").is_file()


def _check_run_folder(run: Path) -> None:
    """A run folder must be an evaluation (``metrics.csv``) or hold label maps.

    Raises:
        InputError: the folder is missing, is an evaluation folder without ``metrics.csv``, or
            holds neither ``metrics.csv`` nor NIfTI files.
    """
    if not run.is_dir():
        raise InputError(f"{run}: run folder not found")
    if _is_evaluation(run):
        return
    present = [name for name in _EVALUATION_FILES if (run / name).is_file()]
    if present:
        raise InputError(
            f"{run}: evaluation folder without metrics.csv (has {', '.join(present)}); "
            "evaluate again or give the prediction folder"
        )
    if not find_predictions(run):
        raise InputError(
            f"{run}: neither an evaluation folder (no metrics.csv) nor a prediction folder "
            "(no .nii.gz label maps)"
        )


def load_run(
    run: str | os.PathLike[str],
    name: str,
    out_dir: Path,
    *,
    ref: str | os.PathLike[str] | None = None,
    workers: int = 2,
    progress: bool = True,
    allow_missing: bool = False,
) -> EvaluationResult:
    """An evaluation folder as is, or a prediction folder evaluated against ``ref``.

    Args:
        allow_missing: missing predictions do not make the run's exit code 1 (for an
            evaluation folder too, whatever it was evaluated with).

    Raises:
        InputError: the folder is missing, is an evaluation folder without its ``metrics.csv``
            (or with a broken one), holds neither ``metrics.csv`` nor label maps, or is a
            prediction folder and ``ref`` is ``None``.
    """
    run = Path(run)
    _check_run_folder(run)
    if _is_evaluation(run):
        # This comparison's allow_missing decides, not the one the folder was evaluated with.
        return load_evaluation(run, allow_missing=allow_missing)
    if ref is None:
        raise InputError(
            f"{run}: no metrics.csv here; to compare a prediction folder give the references "
            "(--ref DATASET_OR_DIR)"
        )
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return evaluate(
        run,
        ref,
        out_dir / "evaluations" / safe,
        workers=workers,
        progress=progress,
        print_table=False,
        allow_missing=allow_missing,
    )


def write_table_csv(rows: Sequence[dict[str, object]], path: Path) -> Path:
    """The method table as CSV (``method``, then ``dice_wt ... hd95_et``, ``n``)."""
    return write_csv(rows, list(rows[0]) if rows else ["method"], path)


def compare(
    runs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    ref: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    cases: Sequence[str] | None = None,
    n_overlays: int = 3,
    workers: int = 2,
    progress: bool = True,
    allow_missing: bool = False,
) -> ComparisonResult:
    """Compare methods side by side.

    Args:
        runs: evaluation folders (with ``metrics.csv``) or prediction folders (need ``ref``).
        out_dir: output folder (created).
        names: method names, one per run (default: the folder names).
        ref: references for prediction folders (dataset folder or flat folder of label maps).
        images: dataset folder with FLAIR/T1ce for the overlays (default: the first run's
            reference folder, when it is a dataset).
        cases: case ids for overlays (default: the ``n_overlays`` worst cases of the first run).
        n_overlays: overlays drawn when ``cases`` is ``None``.
        workers: processes for evaluating prediction folders.
        progress: progress bars.
        allow_missing: missing predictions do not make :attr:`ComparisonResult.exit_code` 1
            (they are still scored as empty and reported).

    Returns:
        A :class:`ComparisonResult`.
    """
    if not runs:
        raise InputError("compare needs at least one run")
    if names is not None and len(names) != len(runs):
        raise InputError(f"--names: {len(names)} names for {len(runs)} runs")
    for r in runs:  # every folder checked before any is evaluated
        _check_run_folder(Path(r))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_names = list(names) if names is not None else [Path(r).resolve().name for r in runs]
    loaded = [
        load_run(
            r, n, out_dir, ref=ref, workers=workers, progress=progress, allow_missing=allow_missing
        )
        for r, n in zip(runs, run_names)
    ]
    results = normalize_results(loaded, run_names)
    table = method_table(results)
    (out_dir / "table.md").write_text(method_table_markdown(table))
    write_table_csv(table, out_dir / "table.csv")
    if cases is not None:
        known = {row["case"] for res in results.values() for row in res.rows}
        unknown = [c for c in cases if c not in known]
        if unknown:
            raise InputError(f"--cases: unknown case ids {unknown[:10]}")
    report = write_report(
        out_dir,
        results,
        images_for_overlays=images,
        overlay_cases=cases,
        n_overlays=n_overlays,
        title="cascadeseg comparison",
        figures_dir=out_dir,
    )
    return ComparisonResult(out_dir, results, table, report)
