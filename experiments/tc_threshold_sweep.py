"""The tumour core's threshold in cases without enhancing tumour: TC Dice per threshold.

For each trained run (``--model``) and each held-out folder (``--data``), every case is predicted
once, with the recipe's settings and the rule off (8-flip TTA, ``predict_case``); its label map
is then made at each threshold ``T`` (``--thresholds``) in two ways and post-processed as
``predict`` does:

* ``without_et``: ``T`` for the core only where the map at the recipe's threshold holds no
  enhancing tumour (:func:`cascadeseg.data.labels.probabilities_to_label`), which is what
  ``inference.tc_threshold_without_et=T`` does;
* ``every``: ``T`` for the core of every case.

Each variant's WT / TC / ET Dice per case is written to ``--out`` (JSON), and the means per held-out
folder, threshold and variant are printed (one network pass per case for every threshold).

    python experiments/tc_threshold_sweep.py --model runs/a --model runs/b \\
        --data demo_out/data/test --data no_et --out tc_sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("without_et", "every")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, action="append", required=True, help="a run folder")
    p.add_argument("--data", type=Path, action="append", required=True, help="held-out cases")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.4, 0.3, 0.2])
    p.add_argument("--out", type=Path, required=True, help="JSON of the per-case rows")
    return p.parse_args(argv)


def label_at(probabilities: np.ndarray, threshold: float, tc: float, variant: str) -> np.ndarray:
    """The label map with the core at ``tc``: in cases without ET only, or in every case."""
    from cascadeseg.data.labels import probabilities_to_label, regions_to_label

    if variant == "without_et":
        return probabilities_to_label(probabilities, threshold, tc)
    regions = probabilities >= threshold
    regions[1] = probabilities[1] >= tc
    return regions_to_label(regions)


def case_rows(model: Path, folder: Path, thresholds: list[float]) -> list[dict[str, Any]]:
    """One row per case of ``folder``: Dice per region for each threshold and variant."""
    from cascadeseg.data.labels import ET, label_to_regions, probabilities_to_label
    from cascadeseg.data.layouts import load_dataset
    from cascadeseg.evaluation.metrics import region_dice
    from cascadeseg.inference import load_models, options_from_recipe
    from cascadeseg.inference.options import OFF
    from cascadeseg.inference.predictor import postprocess_label, predict_case

    models = load_models([model], "cpu")
    options = options_from_recipe(
        models, {"tc_threshold_without_et": OFF}, device="cpu", progress=False
    )
    rows = []
    for case in load_dataset(folder):
        probabilities = predict_case(case, models, options).probabilities
        ref = label_to_regions(np.asarray(case.label))
        row: dict[str, Any] = {"model": model.name, "set": folder.name, "case": case.case_id}
        row["ref_et"] = bool(ref[2].any())
        plain = probabilities_to_label(probabilities, options.threshold)
        row["pred_et"] = bool(np.any(plain == ET))
        for variant in VARIANTS:
            for tc in thresholds:
                label = label_at(probabilities, options.threshold, tc, variant)
                label, _, _ = postprocess_label(label, models, options, case.meta.spacing)
                dice = region_dice(label_to_regions(label), ref)
                row[f"{variant}@{tc:g}"] = [round(float(v), 4) for v in dice]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summary(rows: list[dict[str, Any]], thresholds: list[float]) -> list[str]:
    """Mean TC Dice per held-out folder, variant and threshold (over cases, then runs)."""
    lines = []
    for folder in dict.fromkeys(r["set"] for r in rows):
        for variant in VARIANTS:
            means = []
            for tc in thresholds:
                runs: dict[str, list[float]] = {}
                for r in rows:
                    if r["set"] == folder:
                        runs.setdefault(r["model"], []).append(r[f"{variant}@{tc:g}"][1])
                means.append(np.mean([np.mean(v) for v in runs.values()]))
            text = " ".join(f"{tc:g}: {m:.3f}" for tc, m in zip(thresholds, means))
            lines.append(f"{folder} ({variant}, {len(runs)} runs) TC {text}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for model in args.model:
        for folder in args.data:
            rows += case_rows(model, folder, args.thresholds)
    args.out.write_text(json.dumps(rows, indent=1))
    print("\n".join(summary(rows, args.thresholds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
