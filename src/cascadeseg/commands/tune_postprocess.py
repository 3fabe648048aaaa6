"""``cascadeseg tune-postprocess``: choose the ET post-processing threshold of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "choose the ET volume threshold (two-stage sec. 3.4) on validation cases; store it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, metavar="RUN_DIR", help="run folder")
    parser.add_argument(
        "--data", required=True, type=Path, help="dataset folder holding the cases (with labels)"
    )
    parser.add_argument(
        "--cases",
        choices=["val", "test", "all"],
        default="val",
        help="val: the run's split.json validation ids (default); all: every labelled case "
        "of --data (a separate validation folder)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        nargs="+",
        help="thresholds in voxels to try (default: 0 50 100 200 300 500 750 1000 1500)",
    )
    parser.add_argument("--no-tta", action="store_true", help="tune without flip TTA")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="inference precision"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cascadeseg.errors import InputError
    from cascadeseg.inference.postprocess import DEFAULT_ET_CANDIDATES, tune_postprocess
    from cascadeseg.inference.predictor import PredictOptions

    if not args.model.is_dir():
        raise InputError(f"{args.model}: not a run directory")
    options = PredictOptions(
        tta=not args.no_tta,
        device=args.device,
        precision=args.precision,
        progress=not args.no_progress,
    )
    result = tune_postprocess(
        args.model,
        args.data,
        cases=args.cases,
        candidates=args.candidates or DEFAULT_ET_CANDIDATES,
        options=options,
    )
    for threshold, score in result.mean_dice.items():
        mark = "  <- chosen" if threshold == result.best else ""
        print(f"et_min_voxels {threshold:6d}: mean ET Dice {score:.4f}{mark}")
    print(
        f"wrote {args.model / 'postprocess.json'} (et_min_voxels {result.best}, "
        f"{result.n_cases} cases)"
    )
    return 0
