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
    parser.add_argument(
        "--output",
        required=True,
        type=Path,
        metavar="DIR",
        help="output folder; never an input's file (refused), locked while predict writes",
    )
    parser.add_argument(
        "--case-id",
        default=None,
        metavar="ID",
        help="case id of four modality files (default: the files' common name prefix)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep preprocessed inputs in this folder and reuse them (default: none)",
    )
    parser.add_argument("--no-tta", action="store_true", help="no flip test-time augmentation")
    parser.add_argument(
        "--labels",
        choices=["brats2021", "brats2023"],
        help="label values of written maps (default: the input's convention)",
    )
    parser.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <case>_probabilities.nii.gz (4D: WT, TC, ET); added to cases already "
        "segmented by the same models, their segmentation kept",
    )
    parser.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write <case>_uncertainty.nii.gz (variance over TTA and ensemble members; "
        "a usage error with --no-tta and one model: one pass has nothing to vary over)",
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
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="run checkpoints with PyTorch, or exported .onnx models with ONNX Runtime",
    )
    parser.add_argument(
        "--et-min-voxels",
        type=int,
        default=None,
        metavar="N",
        help="ET smaller than N voxels becomes necrosis (default: the value stored with the "
        "model by tune-postprocess, else off)",
    )
    parser.add_argument(
        "--batch-slices", type=int, default=16, help="slices per batch for 2D models"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (without it, cases with outputs are skipped: exit 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from cascadeseg.inference import PredictOptions, load_models, predict
    from cascadeseg.inference.predictor import resolve_device

    options = PredictOptions(
        tta=not args.no_tta,
        sliding_window=args.sliding_window,
        overlap=args.overlap,
        precision=args.precision,
        device=args.device,
        batch_slices=args.batch_slices,
        et_min_voxels=args.et_min_voxels,
        labels=args.labels,
        save_probabilities=args.save_probabilities,
        save_uncertainty=args.save_uncertainty,
        overwrite=args.overwrite,
        backend=args.backend,
        progress=not args.no_progress,
        cache_dir=None if args.cache is None else str(args.cache),
    )
    device = resolve_device(options.device)
    models = load_models(args.model, device)
    inputs = args.input[0] if len(args.input) == 1 else args.input
    results = predict(models, inputs, args.output, options, case_id=args.case_id)
    # 0 all done; 1 some cases failed or skipped (outputs exist); usage errors raise (exit 2).
    return 1 if any(r.status in ("failed", "skipped") for r in results) else 0
