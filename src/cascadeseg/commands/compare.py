"""``cascadeseg compare``: several evaluated methods side by side (table, box plots, overlays)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "compare several evaluated methods side by side (table, box plots, overlays, report)"
#: The folder this command writes, locked while it runs (see cascadeseg.cli).
OUTPUT_FOLDER = "out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="evaluation folder (with metrics.csv) or prediction folder (then give --ref)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--names", nargs="+", help="method names, one per RUN (default: folder names)"
    )
    parser.add_argument(
        "--ref", type=Path, help="references for prediction folders (dataset or label-map folder)"
    )
    parser.add_argument("--images", type=Path, help="dataset folder with FLAIR/T1ce for overlays")
    parser.add_argument("--cases", nargs="+", help="case ids to draw (default: the 3 worst)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default: 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
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
    )
    print(method_table_markdown(result.table), end="")
    print(f"written: {result.table_md}, {result.table_csv}, {result.report}")
    return 0
