"""Flip passes on the tumour's box against flips on the whole volume (issue 20, one lever).

For each case of a data folder, with the trained models of a run folder (or checkpoints):

1. ``tta_region="volume"`` and ``tta_region="tumour"`` predicted on the preprocessed grid
   (``inference.predictor.predict_preprocessed``: the ensemble and its flips, as ``predict``
   runs them; preprocessing, post-processing and writing left out), each timed (seconds of the
   network passes);
2. the tumour box of the first pass: voxels and fraction of the volume;
3. every pass of the ensemble (each member with each of its flips, ``flip_plan``) run again on
   the whole volume, each thresholded into a label map: the voxels *outside the box* where any
   pass's label differs from the first (identity) pass's label. 0 means every pass agrees
   outside the box, so the passes there could change nothing (when their mean labels as each
   does); the fraction of such cases is the question of the issue;
4. the voxels outside the box where the two final label maps differ, and the Dice per region
   ``[WT, TC, ET]`` of each against the reference label (when the case has one; on the
   preprocessed grid, before post-processing) and their difference (tumour - volume).

Writes JSON (``--out``, default ``benchmarks/results/roi-flips.json``) with one row per case and
a summary, and prints the summary. A measurement, not a test: run it on a quiet machine.

    python benchmarks/roi_flips.py --model RUN --data DATA [--cases 20] [--device cuda]

``benchmarks/lever_dice.py`` puts the same question beside the other levers of issue 20 (bf16,
ONNX Runtime, OpenVINO), on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cascadeseg.bench.lever_dice import outside_mask, pass_disagreement, timed_prediction
from cascadeseg.data.labels import label_to_regions
from cascadeseg.data.layouts import discover_cases
from cascadeseg.data.layouts.reading import read_case
from cascadeseg.data.preprocess import Preprocessed, preprocess_case
from cascadeseg.evaluation.metrics import region_dice
from cascadeseg.inference.loading import LoadedModel, load_models
from cascadeseg.inference.options import PredictOptions
from cascadeseg.runtime import resolve_device


def measure_case(
    pre: Preprocessed, models: Sequence[LoadedModel], base: PredictOptions, device: torch.device
) -> dict[str, Any]:
    """One row: seconds, box, disagreement outside the box, Dice of both modes."""
    volume = dataclasses.replace(base, tta_region="volume")
    tumour = dataclasses.replace(base, tta_region="tumour")
    label_v, info_v, seconds_v = timed_prediction(pre, models, volume, device)
    label_t, info_t, seconds_t = timed_prediction(pre, models, tumour, device)
    record = info_t["tta_region_box"]
    outside = outside_mask(label_v.shape, record["box"])
    disagree, passes = pass_disagreement(pre, models, volume, device, outside)
    row: dict[str, Any] = {
        "case_id": pre.case_id,
        "shape": [int(s) for s in label_v.shape],
        "seconds_volume": round(seconds_v, 3),
        "seconds_tumour": round(seconds_t, 3),
        "passes_volume": info_v["passes"],
        "passes_tumour": info_t["passes"],
        "box": record["box"],
        "box_fraction": record["box_fraction"],
        "outside_voxels": int(np.count_nonzero(outside)),
        "passes_compared": passes,
        "outside_pass_disagreement_voxels": disagree,
        "all_passes_agree_outside": disagree == 0,
        "outside_final_label_differences": int(np.count_nonzero((label_v != label_t) & outside)),
        "label_differences": int(np.count_nonzero(label_v != label_t)),
    }
    if pre.label is not None:
        reference = label_to_regions(pre.label)
        dice_v = region_dice(label_to_regions(label_v), reference)
        dice_t = region_dice(label_to_regions(label_t), reference)
        row["dice_volume"] = [round(float(d), 5) for d in dice_v]
        row["dice_tumour"] = [round(float(d), 5) for d in dice_t]
        row["dice_difference"] = [round(float(d), 6) for d in dice_t - dice_v]
    return row


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians and counts over the cases."""
    if not rows:
        return {"cases": 0}
    summary: dict[str, Any] = {
        "cases": len(rows),
        "median_seconds_volume": statistics.median(r["seconds_volume"] for r in rows),
        "median_seconds_tumour": statistics.median(r["seconds_tumour"] for r in rows),
        "median_box_fraction": statistics.median(r["box_fraction"] for r in rows),
        "cases_all_passes_agree_outside": sum(r["all_passes_agree_outside"] for r in rows),
        "cases_final_label_differs_outside": sum(
            r["outside_final_label_differences"] > 0 for r in rows
        ),
    }
    with_dice = [r for r in rows if "dice_difference" in r]
    if with_dice:
        differences = np.array([r["dice_difference"] for r in with_dice])
        summary["mean_dice_difference"] = [round(float(d), 6) for d in differences.mean(0)]
        summary["worst_dice_difference"] = [round(float(d), 6) for d in differences.min(0)]
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", required=True, help="run folder(s) or checkpoints")
    parser.add_argument("--data", required=True, help="data folder (any supported layout)")
    parser.add_argument("--out", default="benchmarks/results/roi-flips.json")
    parser.add_argument("--cases", type=int, default=None, help="first N cases only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--margin", type=int, default=PredictOptions.tta_region_margin)
    parser.add_argument("--threshold", type=float, default=PredictOptions.tta_region_threshold)
    parser.add_argument("--ensemble-mode", default="paired", choices=["paired", "product"])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    models = load_models(args.model, device)
    base = PredictOptions(
        device=str(device),
        precision=args.precision,
        progress=False,
        ensemble_mode=args.ensemble_mode,
        tta_region_margin=args.margin,
        tta_region_threshold=args.threshold,
    )
    rows = []
    for ref in discover_cases(args.data)[: args.cases]:
        pre = preprocess_case(read_case(ref), models[0].preprocess)
        rows.append(measure_case(pre, models, base, device))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "models": [str(m.source) for m in models],
        "options": {"margin": args.margin, "threshold": args.threshold},
        "summary": summarise(rows),
        "cases": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
