"""``cascadeseg evaluate``: BraTS metrics of predictions against references, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "BraTS metrics (Dice, HD95, sensitivity, specificity) of predictions against references"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pred", type=Path, required=True, help="folder of <case_id>.nii.gz label maps"
    )
    parser.add_argument(
        "--ref",
        type=Path,
        required=True,
        help="reference dataset (any supported layout) or folder of <case_id>.nii.gz label maps",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--ref-layout",
        help="layout of --ref: 'flat' (label maps) or a dataset layout (default: detected)",
    )
    parser.add_argument(
        "--ref-convention", help="label convention of the references (default: from the layout)"
    )
    parser.add_argument(
        "--pred-convention",
        help="label convention of the predictions, e.g. brats2021, brats2023, msd "
        "(default: detected from the values; MSD/nnU-Net predictions must be named)",
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
    parser.add_argument("--workers", type=int, default=2, help="processes (default: 2)")
    parser.add_argument("--no-report", action="store_true", help="do not write report.html")
    parser.add_argument("--images", type=Path, help="dataset with FLAIR/T1ce for overlays")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
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
        lesion_rules=args.lesion_rules,
        challenge=args.challenge,
    )
    written = [str(result.metrics_csv), str(result.summary_json)]
    if args.lesion_rules != "none":
        written.append(str(result.out_dir / "lesions.csv"))
    if not args.no_report:
        written.append(str(write_report(args.out, result, images_for_overlays=args.images)))
    if result.missing:
        print(
            f"{len(result.missing)} missing predictions (scored as empty): "
            + ", ".join(result.missing[:20])
        )
    for case, message in result.errors.items():
        print(f"error: {case}: {message}")
    print("written: " + ", ".join(written))
    # cli.py: failures of some cases in a batch exit 1.
    return 1 if result.errors else 0
