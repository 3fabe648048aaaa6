"""``cascadeseg predict``: segment cases with one or more trained models."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "segment cases with one or more trained models (TTA, ensembles, post-processing)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        type=Path,
        metavar="RUN_DIR_OR_CKPT",
        help="run directory (its snapshots, else best.pt, else last.pt), .pt checkpoint or "
        ".onnx export; repeat for an ensemble (e.g. the k folds)",
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        type=Path,
        metavar="PATH",
        help="a case folder, a dataset folder (any supported layout), or four modality files "
        "(FLAIR T1 T1ce T2; recognised by name when the names say, else in that order)",
    )
    parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--no-tta", action="store_true", help="no flip test-time augmentation")
    parser.add_argument(
        "--labels",
        choices=["brats2021", "brats2023"],
        help="label values of written maps (default: the input's convention)",
    )
    parser.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <case>_probabilities.nii.gz (4D: WT, TC, ET)",
    )
    parser.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write <case>_uncertainty.nii.gz (variance over TTA and ensemble members)",
    )
    parser.add_argument(
        "--sliding-window",
        choices=["auto", "always", "never"],
        default="auto",
        help="auto: whole volume, sliding window when memory is short (default)",
    )
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)"
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16 autocast where the device supports it natively (default fp32)",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    parser.add_argument(
        "--et-min-voxels",
        type=int,
        default=None,
        metavar="N",
        help="ET smaller than N voxels becomes necrosis (default: the value stored with the "
        "model by tune-postprocess, else off)",
    )
    parser.add_argument(
        "--min-lesion-voxels",
        default=None,
        metavar="wt=N,tc=N,et=N",
        help="remove predicted components below N voxels per region (a small WT component "
        "becomes background, TC edema, ET necrosis); any subset, or N for all three "
        "(default: the values stored with the model by tune-postprocess, else off)",
    )
    parser.add_argument(
        "--batch-slices", type=int, default=16, help="slices per batch for 2D models"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cascadeseg.inference import PredictOptions, load_models, predict
    from cascadeseg.inference.lesion_postprocess import parse_min_lesion_voxels
    from cascadeseg.inference.predictor import resolve_device

    options = PredictOptions(
        tta=not args.no_tta,
        sliding_window=args.sliding_window,
        overlap=args.overlap,
        precision=args.precision,
        device=args.device,
        batch_slices=args.batch_slices,
        et_min_voxels=args.et_min_voxels,
        min_lesion_voxels=None
        if args.min_lesion_voxels is None
        else parse_min_lesion_voxels(args.min_lesion_voxels),
        labels=args.labels,
        save_probabilities=args.save_probabilities,
        save_uncertainty=args.save_uncertainty,
        overwrite=args.overwrite,
        backend=args.backend,
        progress=not args.no_progress,
    )
    device = resolve_device(options.device)
    models = load_models(args.model, device)
    inputs = args.input[0] if len(args.input) == 1 else args.input
    results = predict(models, inputs, args.output, options)
    return 1 if any(r.status == "failed" for r in results) else 0
