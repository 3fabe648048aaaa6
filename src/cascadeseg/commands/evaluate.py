"""``cascadeseg evaluate``: BraTS metrics of predictions against references, with a report.

Exit status: 0 when every reference case was evaluated; 1 when a prediction is missing (scored
as empty, unless ``--allow-missing``) or a case could not be evaluated; 2 for an input error
(a folder missing, no reference label map, none readable).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cascadeseg.commands._options import add_no_progress, add_workers
from cascadeseg.data.labels import CONVENTIONS
from cascadeseg.data.layouts import LAYOUTS

HELP = "BraTS metrics (Dice, HD95, sensitivity, specificity) of predictions against references"
#: The folder this command writes, locked while it runs (see cascadeseg.cli).
OUTPUT_FOLDER = "out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    layouts = ["flat", *(name for name in LAYOUTS if name != "files")]
    parser.add_argument(
        "--pred",
        type=Path,
        required=True,
        help="folder of predicted label maps <case_id>.nii.gz (also <case_id>-seg / _seg) "
        "(required)",
    )
    parser.add_argument(
        "--ref",
        type=Path,
        required=True,
        help="reference dataset (any supported layout) or folder of reference label maps "
        "<case_id>.nii.gz, <case_id>-seg.nii.gz or <case_id>_seg.nii.gz, directly or one per "
        "case sub-folder (required)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder for metrics.csv, summary.json and report.html (required)",
    )
    parser.add_argument(
        "--ref-layout",
        choices=layouts,
        help="layout of --ref: 'flat' (label maps) or a dataset layout "
        "(default: detected from the folder)",
    )
    parser.add_argument(
        "--ref-convention",
        choices=list(CONVENTIONS),
        help="label convention of the references (default: from the layout, or detected from "
        "the values)",
    )
    parser.add_argument(
        "--pred-convention",
        choices=list(CONVENTIONS),
        help="label convention of the predictions (default: detected from the values; "
        "MSD/nnU-Net predictions must be named)",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="exit 0 although predictions are missing (they are still scored as empty and "
        "listed) (default: off, missing predictions exit 1)",
    )
    parser.add_argument(
        "--lesion-rules",
        choices=("panoptica", "brats2023", "both", "none"),
        default="panoptica",
        help="lesion-wise metrics: 'panoptica' = the official BraTS-evaluation package "
        "(default; columns lesion_*), 'brats2023' = the BraTS 2023 ranking code (columns "
        "lesion23_*), 'both', or 'none'; see docs/metrics.md",
    )
    parser.add_argument(
        "--challenge",
        default="GLI",
        help="BraTS 2023 challenge for --lesion-rules brats2023: GLI, SSA, PED (3 dilations, "
        "50 mm^3), MEN (1, 50), MET (1, 2) (default: GLI)",
    )
    add_workers(parser, default=2, help="processes (default: %(default)s)")
    parser.add_argument(
        "--no-report", action="store_true", help="do not write report.html (default: off)"
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="dataset with FLAIR/T1ce images for the overlays (default: --ref, when it has them)",
    )
    add_no_progress(parser, "no progress bar (default: off)")


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs, not for --help: matplotlib and scipy, about 1 s.
    from cascadeseg.evaluation.evaluate import evaluate
    from cascadeseg.evaluation.report import write_report

    result = evaluate(
        args.pred,
        args.ref,
        args.out,
        ref_layout=args.ref_layout,
        ref_convention=args.ref_convention,
        pred_convention=args.pred_convention,
        workers=args.workers,
        progress=not args.no_progress,
        allow_missing=args.allow_missing,
        lesion_rules=args.lesion_rules,
        challenge=args.challenge,
    )
    written = [str(result.metrics_csv), str(result.summary_json)]
    if args.lesion_rules != "none":
        written.append(str(result.out_dir / "lesions.csv"))
    if not args.no_report:
        written.append(str(write_report(args.out, result, images_for_overlays=args.images)))
    print("written: " + ", ".join(written))
    # 1: some cases missing or failed (cascadeseg's exit policy; see evaluation.checks).
    return int(result.summary["exit_code"])
