"""``cascadeseg compare``: several evaluated methods side by side (table, box plots, overlays).

Exit status: 0 when every method's cases were all evaluated; 1 when a method has missing
predictions (unless ``--allow-missing``) or failed cases, named above the table; 2 for an input
error (a run folder missing, or an evaluation folder without its files).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cascadeseg.commands._options import add_no_progress, add_workers

HELP = "compare several evaluated methods side by side (table, box plots, overlays, report)"
#: The folder this command writes, locked while it runs (see cascadeseg.cli).
OUTPUT_FOLDER = "out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="evaluation folder (with metrics.csv) or prediction folder (then give --ref); "
        "one or more (required)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder for the tables and report.html (required)",
    )
    parser.add_argument(
        "--names", nargs="+", help="method names, one per RUN (default: the folder names)"
    )
    parser.add_argument(
        "--ref",
        type=Path,
        help="references for prediction folders, dataset or label-map folder (default: none; "
        "needed only for prediction folders)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="dataset folder with FLAIR/T1ce for overlays (default: the first run's references)",
    )
    parser.add_argument(
        "--cases", nargs="+", help="case ids to draw (default: the 3 worst of the first run)"
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="exit 0 although a method has missing predictions (they are still scored as empty "
        "and named) (default: off, missing predictions exit 1)",
    )
    add_workers(parser, default=2, help="processes (default: %(default)s)")
    add_no_progress(parser, "no progress bars (default: off)")


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs, not for --help: matplotlib and scipy, about 1 s.
    from cascadeseg.evaluation.compare import compare
    from cascadeseg.evaluation.report import method_table_markdown

    result = compare(
        args.runs,
        args.out,
        names=args.names,
        ref=args.ref,
        images=args.images,
        cases=args.cases,
        workers=args.workers,
        progress=not args.no_progress,
        allow_missing=args.allow_missing,
    )
    for warning in result.warnings:
        print(f"WARNING: {warning}")
    print(method_table_markdown(result.table), end="")
    print(f"written: {result.table_md}, {result.table_csv}, {result.report}")
    # 1: a method has missing or failed cases (cascadeseg's exit policy; see evaluation.checks).
    return result.exit_code
