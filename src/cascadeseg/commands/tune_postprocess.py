"""``cascadeseg tune-postprocess``: choose a run's post-processing on validation cases.

Two settings, stored in ``RUN_DIR/postprocess.json`` and used by ``predict``:

* ``min_lesion_voxels``: per region (WT, TC, ET), predicted components below this size are
  removed (:mod:`cascadeseg.inference.lesion_postprocess`); chosen to maximise the BraTS 2023
  lesion-wise Dice (:func:`cascadeseg.evaluation.lesions.lesion_matching`, ``brats2023`` rules),
  where every false-positive component counts as a lesion with Dice 0, averaged over the regions
  a threshold changes (WT's over WT, TC and ET). (The official package's
  ``sq_dsc`` averages matched lesions only, so removing false positives cannot raise it: it
  cannot choose such a threshold.)
* ``et_min_voxels``: ET smaller than this becomes necrosis (two-stage paper, sec. 3.4), chosen by
  mean ET Dice on labels with the component thresholds applied.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cascadeseg.commands._options import add_no_progress
from cascadeseg.errors import ConfigError, InputError

HELP = (
    "choose post-processing on validation cases (per-region small-component removal for "
    "lesion-wise Dice; the ET volume threshold of two-stage sec. 3.4); store it with the run"
)


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
    parser.add_argument(
        "--lesion-candidates",
        type=int,
        nargs="+",
        metavar="N",
        help="component-size thresholds in voxels to try per region "
        "(default: 0 5 10 20 50 100 200 400)",
    )
    parser.add_argument(
        "--no-lesion-tuning",
        action="store_true",
        help="tune the ET threshold only (keep stored component thresholds out of the file)",
    )
    parser.add_argument(
        "--challenge",
        default="GLI",
        help="BraTS 2023 challenge whose lesion rules (dilation, size threshold) score the "
        "candidates (default GLI)",
    )
    parser.add_argument("--no-tta", action="store_true", help="tune without flip TTA")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="inference precision"
    )
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs, not for --help: inference loads torch (about 2 s).
    from cascadeseg.inference.lesion_postprocess import AFFECTED_REGIONS
    from cascadeseg.inference.options import PredictOptions
    from cascadeseg.inference.tuning import DEFAULT_ET_CANDIDATES, tune_postprocess

    if not args.model.is_dir():
        raise InputError(f"{args.model}: not a run directory")
    options = PredictOptions(
        tta=not args.no_tta,
        device=args.device,
        precision=args.precision,
        progress=not args.no_progress,
    )
    score = None if args.no_lesion_tuning else brats2023_lesion_dice(args.challenge)
    result = tune_postprocess(
        args.model,
        args.data,
        cases=args.cases,
        candidates=args.candidates or DEFAULT_ET_CANDIDATES,
        options=options,
        lesion_score=score,
        lesion_candidates=args.lesion_candidates,
        lesion_objective=f"lesion-wise Dice, BraTS 2023 rules ({args.challenge})",
    )
    if result.lesion is not None:
        for region, scores in result.lesion.mean_score.items():
            for threshold, value in scores.items():
                mark = "  <- chosen" if threshold == result.lesion.best[region] else ""
                over = "/".join(r.upper() for r in AFFECTED_REGIONS[region])
                print(
                    f"min_lesion_voxels {region} {threshold:5d}: "
                    f"mean lesion-wise Dice over {over} {value:.4f}{mark}"
                )
    for threshold, et_dice in result.mean_dice.items():
        mark = "  <- chosen" if threshold == result.best else ""
        print(f"et_min_voxels {threshold:6d}: mean ET Dice {et_dice:.4f}{mark}")
    lesion = ""
    if result.lesion is not None:
        chosen = ",".join(f"{k}={v}" for k, v in result.lesion.best.items())
        lesion = f", min_lesion_voxels {chosen}"
    print(
        f"wrote {args.model / 'postprocess.json'} (et_min_voxels {result.best}{lesion}, "
        f"{result.n_cases} cases)"
    )
    return 0


def brats2023_lesion_dice(challenge: str) -> Callable[[np.ndarray, np.ndarray, Any], float]:
    """``score(pred_mask, ref_mask, spacing)``: lesion-wise Dice under the BraTS 2023 rules of
    ``challenge`` (:class:`ConfigError` for an unknown one)."""
    # Loaded when the command runs, not for --help: the lesion code loads scipy (about 1 s).
    from cascadeseg.evaluation.lesions import challenge_parameters, lesion_matching

    try:
        challenge_parameters(challenge)
    except ValueError as exc:
        raise ConfigError(f"--challenge: {exc}") from None

    def score(pred: np.ndarray, ref: np.ndarray, spacing: Any) -> float:
        result = lesion_matching(pred, ref, spacing, rules="brats2023", challenge=challenge)
        return float(result.dice)

    return score
