"""``cascadeseg predict``: segment cases with one or more trained models.

One source of truth for the recipe's inference settings: ``--tta/--no-tta``, ``--sliding-window``,
``--overlap``, ``--precision``, ``--threshold``, ``--tc-threshold-without-et``, ``--tta-region``,
``--tta-region-margin`` and ``--tta-region-threshold`` override the ``inference.*`` values stored
with the model only when given; otherwise the stored value is used, else the built-in default
(:func:`cascadeseg.inference.options.options_from_recipe`). Each case's JSON says which.

Scaling (:mod:`cascadeseg.inference.shards`): under ``torchrun`` the ranks split the cases
(``cuda:LOCAL_RANK`` each, or ``cores / LOCAL_WORLD_SIZE`` CPU threads), rank 0 prints the summary
of all cases; ``--part i/n`` (``i`` from 1) predicts the ``i``-th of ``n`` shares, for job arrays.

Missing sequences (:mod:`cascadeseg.data.missing`): a model trained with sequence dropout takes
cases that lack sequence files (each case's line and JSON name them); ``--missing t1ce`` ignores
a sequence of complete cases. Models trained without sequence dropout need all four, unless
``--substitute-missing sibling|zero`` fills the missing ones (a baseline; each case's line and
JSON say what replaced what).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cascadeseg.commands._options import add_no_progress

HELP = "segment cases with one or more trained models (TTA, ensembles, post-processing)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_inputs(parser)
    _add_inference(parser)
    _add_tta_region(parser)
    _add_outputs(parser)


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    """Models, inputs, the output folder and which cases."""
    group = parser.add_argument_group("models, inputs and outputs")
    group.add_argument(
        "--model",
        action="append",
        required=True,
        type=Path,
        metavar="RUN_DIR_OR_CKPT",
        help="run directory (its snapshots, else best.pt, else last.pt), .pt checkpoint or "
        ".onnx export; repeat for an ensemble (e.g. the k folds)",
    )
    group.add_argument(
        "--input",
        required=True,
        nargs="+",
        type=Path,
        metavar="PATH",
        help="a case folder, a dataset folder (any supported layout), or four modality files "
        "(FLAIR T1 T1ce T2; recognised by name when the names say, else in that order); for "
        "models trained with sequence dropout a case may lack sequences (fewer files, named "
        "after their sequences)",
    )
    group.add_argument(
        "--missing",
        action="append",
        default=None,
        metavar="SEQ",
        help="treat sequence SEQ (flair, t1, t1ce, t2; repeat or comma-separate) as missing in "
        "every case: its file is ignored and the channel filled as the model was trained, to "
        "measure or show a model on complete cases (default: none)",
    )
    group.add_argument(
        "--substitute-missing",
        choices=["sibling", "zero"],
        default=None,
        help="let a model trained without sequence dropout run on cases lacking sequences (or "
        "with --missing), as a baseline: sibling replaces a missing sequence by its nearest "
        "present sibling (T1 for T1ce, T1ce for T1, T2 for FLAIR, FLAIR for T2; then FLAIR, T2 "
        "for the T1 pair, T1ce, T1 for the T2 pair), zero fills zeros in the normalised space "
        "(default: none, such cases are an error; models trained with dropout ignore it)",
    )
    group.add_argument(
        "--output",
        required=True,
        type=Path,
        metavar="DIR",
        help="output folder; never an input's file (refused), locked while predict writes",
    )
    group.add_argument(
        "--case-id",
        default=None,
        metavar="ID",
        help="case id of four modality files (default: the files' common name prefix)",
    )
    group.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep preprocessed inputs in this folder and reuse them (default: none)",
    )
    group.add_argument(
        "--part",
        default=None,
        metavar="I/N",
        help="predict only the I-th of N shares of the cases (I from 1; round-robin over the "
        "sorted case ids), e.g. --part ${SLURM_ARRAY_TASK_ID}/N in a job array",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (without it, cases with outputs are skipped: exit 1)",
    )
    add_no_progress(group)


def _add_inference(parser: argparse.ArgumentParser) -> None:
    """How the network runs: TTA, ensembles, sliding window, precision, device, backend."""
    group = parser.add_argument_group("how the models run")
    group.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test-time augmentation (default: the recipe's inference.tta, else on)",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="run the network through torch.compile: on an H100 a whole-brain pass took 0.031 s "
        "instead of 0.158 s, after about 40 s of compiling per input shape; worth it for many "
        "cases or passes (default: off)",
    )
    group.add_argument(
        "--ensemble-mode",
        choices=["paired", "product"],
        default="paired",
        help="snapshots of a run: paired (default; snapshot i with flip i, 8 passes for 8 "
        "snapshots, as the two-stage paper) or product (every flip on every snapshot, 64)",
    )
    group.add_argument(
        "--sliding-window",
        choices=["auto", "always", "never"],
        default=None,
        help="auto: whole volume, sliding window when memory is short (default: the recipe's "
        "inference.sliding_window, else auto)",
    )
    group.add_argument(
        "--overlap",
        type=float,
        default=None,
        help="sliding-window overlap (default: the recipe's inference.overlap, else 0.5)",
    )
    group.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="auto: bf16 autocast where the device computes bf16 natively, else fp32; bf16 "
        "falls back to fp32 where not native (default: the recipe's inference.precision, "
        "else auto)",
    )
    group.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    group.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="run checkpoints with PyTorch, or exported .onnx models with ONNX Runtime",
    )
    group.add_argument(
        "--batch-slices", type=int, default=16, help="slices per batch for 2D models"
    )


def _add_tta_region(parser: argparse.ArgumentParser) -> None:
    """Where the TTA passes after a case's first run (issue 20, :mod:`cascadeseg.inference.roi`)."""
    group = parser.add_argument_group("flip passes on the tumour's box")
    group.add_argument(
        "--tta-region",
        choices=["volume", "tumour", "auto"],
        default=None,
        help="where the TTA passes after a case's first run: volume (every flip on the whole "
        "volume), tumour (on the first pass's tumour box plus --tta-region-margin; outside it "
        "the first pass alone; 3D models only) or auto (tumour on the CPU with 3D models, else "
        "volume) (default: the recipe's inference.tta_region, else volume)",
    )
    group.add_argument(
        "--tta-region-margin",
        "--tta-margin",
        dest="tta_region_margin",
        type=int,
        default=None,
        metavar="N",
        help="voxels added to every side of the tumour box of --tta-region tumour (default: "
        "the recipe's inference.tta_region_margin, else 16)",
    )
    group.add_argument(
        "--tta-region-threshold",
        type=float,
        default=None,
        metavar="P",
        help="a voxel is in the tumour box of --tta-region tumour when any region probability "
        "of the first pass exceeds P (default: the recipe's inference.tta_region_threshold, "
        "else 0.05)",
    )


def _probability_or_off(text: str) -> float | str:
    """``--tc-threshold-without-et``'s value: a number (checked by PredictOptions) or ``off``."""
    from cascadeseg.inference.options import OFF

    if text.strip().lower() == OFF:
        return OFF
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability or 'off', got {text!r}") from None


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    """What is written: threshold, post-processing, label values, extra maps."""
    group = parser.add_argument_group("what is written")
    group.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="probability threshold of each region (default: the recipe's "
        "inference.threshold, else 0.5)",
    )
    group.add_argument(
        "--tc-threshold-without-et",
        type=_probability_or_off,
        default=None,
        metavar="P|off",
        help="threshold of the tumour core in a case predicted without enhancing tumour; off: "
        "the threshold of every region (default: the recipe's "
        "inference.tc_threshold_without_et, else off)",
    )
    group.add_argument(
        "--et-min-voxels",
        type=int,
        default=None,
        metavar="N",
        help="ET smaller than N voxels becomes necrosis (default: the value stored with the "
        "model by tune-postprocess, else the recipe's inference.et_min_voxels, else off)",
    )
    group.add_argument(
        "--min-lesion-voxels",
        default=None,
        metavar="wt=N,tc=N,et=N",
        help="remove predicted components below N voxels per region (a small WT component "
        "becomes background, TC edema, ET necrosis); any subset, or N for all three "
        "(default: the values stored with the model by tune-postprocess, else off)",
    )
    group.add_argument(
        "--labels",
        choices=["brats2021", "brats2023"],
        help="label values of written maps (default: the input's convention)",
    )
    group.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <case>_probabilities.nii.gz (4D: WT, TC, ET); added to cases already "
        "segmented by the same models, their segmentation kept",
    )
    group.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write <case>_uncertainty.nii.gz (variance over TTA and ensemble members; "
        "a usage error with --no-tta and one model: one pass has nothing to vary over)",
    )


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs, not for --help: inference loads torch (about 2 s).
    from cascadeseg.inference import load_models, predict
    from cascadeseg.inference.lesion_postprocess import parse_min_lesion_voxels
    from cascadeseg.inference.options import options_from_recipe
    from cascadeseg.inference.shards import (
        env_int,
        join_ranks,
        leave_ranks,
        setup_rank_device,
        share_from_env,
    )
    from cascadeseg.runtime import resolve_device

    share = share_from_env(args.part)
    device = resolve_device(args.device, env_int("LOCAL_RANK", 0))
    setup_rank_device(share, device)
    models = load_models(args.model, device)
    given = {
        "tta": args.tta,
        "sliding_window": args.sliding_window,
        "overlap": args.overlap,
        "precision": args.precision,
        "threshold": args.threshold,
        "tc_threshold_without_et": args.tc_threshold_without_et,
        "tta_region": args.tta_region,
        "tta_region_margin": args.tta_region_margin,
        "tta_region_threshold": args.tta_region_threshold,
    }
    options = options_from_recipe(
        models,
        given,
        device=str(device),
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
        # One progress bar per terminal: under torchrun rank 0 shows it, the others print lines.
        progress=not args.no_progress and share.rank == 0,
        cache_dir=None if args.cache is None else str(args.cache),
        ensemble_mode=args.ensemble_mode,
        compile=args.compile,
        missing=tuple(args.missing or ()),
        substitute_missing=args.substitute_missing,
    )
    inputs = args.input[0] if len(args.input) == 1 else args.input
    joined = join_ranks(share)
    try:
        results = predict(models, inputs, args.output, options, case_id=args.case_id, share=share)
    finally:
        leave_ranks(joined)
    # 0 all done; 1 some cases failed or skipped (outputs exist); usage errors raise (exit 2).
    return 1 if any(r.status in ("failed", "skipped") for r in results) else 0
