"""CU-Net paper, Table 1 and Fig. 4, on synthetic data: U-Net, BFCN, DRN, CUN, CUN+LWS (2D).

The paper's five methods in its order, plus one variant, all 2D, trained with the same budget
(by default the same number of optimiser steps and of training slices, ``--steps``; or the same
wall-clock minutes, ``--steps 0 --minutes M``), seed and training cases:

* ``U-Net (2D)``: the recipe ``unet2d_cpu`` (the paper's U-Net baseline);
* ``BFCN``: ``bfcn_cpu`` (boundary-aware FCN, the paper's [8]);
* ``DRN``: ``drn_cpu`` (dilated residual network, the paper's [5]);
* ``CUN``: ``cunet_cpu`` with ``loss.lws=false`` (plain cross-entropy over the brain) and
  ``model.args.unet2_image_input=false`` (U-Net 2 as the paper builds it);
* ``CUN+LWS``: the same with ``loss.lws=true`` (loss weighted sampling, Eqs. 1-3);
* ``CUN+LWS, U-Net 2 sees the image``: CUN+LWS with ``model.args.unet2_image_input=true``, the
  CPU recipe's departure from the paper, so that its effect is measured.

Each predicts the held-out cases with its final weights and no test-time augmentation (the paper
uses none); every 2D model's probabilities are fused with the brain mask as the CU-Net paper
does (the predictor's default for 2D models).
``cascadeseg compare`` makes the Table-1-like table (Dice / Sens / Spec per region) and box plots;
this script adds the paired per-case effect of LWS on sensitivity, the paper's claim
("when LWS is adopted, there is an additional average growth of 1.5 percent in sensitivity").

Usage (defaults: 16 training + 6 held-out cases, 300 steps of 8 slices per model)::

    python experiments/cunet_study.py [--steps 300] [--train-cases 16] [--test-cases 6]
    python experiments/cunet_study.py --steps 0 --minutes 4     # the same wall-clock minutes

Writes ``<out>/cunet_study/`` (table.md, table.csv, boxplots.png, report.html, study.json).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import common
import numpy as np

#: (condition name, run key, predict options): the order of the table rows. Every 2D model's
#: probabilities are fused with the brain mask by the predictor (CU-Net's test-time step; the 2D
#: U-Net is trained on brain voxels only, like CU-Net), so the rows are like for like.
#: The paper's Table 1 order (U-Net, BFCN, DRN, CUN, CUN+LWS), then the CPU recipe's variant.
CONDITIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("U-Net (2D)", "unet2d", {}),
    ("BFCN", "bfcn", {}),
    ("DRN", "drn", {}),
    ("CUN", "cunet_nolws", {}),
    ("CUN+LWS", "cunet_lws", {}),
    ("CUN+LWS, U-Net 2 sees the image", "cunet_lws_image", {}),
)
#: The row of the U-Net 2 image-input variant (compared with CUN+LWS).
IMAGE_INPUT_ROW = "CUN+LWS, U-Net 2 sees the image"
#: The U-Net row the paper's claims are checked against.
UNET_REFERENCE = "U-Net (2D)"
REGIONS = ("wt", "tc", "et")


def paired_effect(
    a: list[dict[str, Any]], b: list[dict[str, Any]], metric: str
) -> dict[str, dict[str, float]]:
    """Per region: mean of ``b - a`` over cases where both are defined, and how many rose/fell.

    Args:
        a, b: per-case rows (``case``, ``<metric>_<region>``) of two conditions.
        metric: ``dice``, ``sens`` or ``spec``.

    Returns:
        ``{region: {"mean_diff", "n", "up", "down", "mean_a", "mean_b"}}``.
    """
    by_case = {row["case"]: row for row in a}
    out: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        col = f"{metric}_{region}"
        pairs = [
            (float(by_case[row["case"]][col]), float(row[col]))
            for row in b
            if row["case"] in by_case
        ]
        pairs = [(x, y) for x, y in pairs if not (math.isnan(x) or math.isnan(y))]
        diffs = np.array([y - x for x, y in pairs], dtype=float)
        out[region] = {
            "n": len(pairs),
            "mean_a": float(np.mean([x for x, _ in pairs])) if pairs else math.nan,
            "mean_b": float(np.mean([y for _, y in pairs])) if pairs else math.nan,
            "mean_diff": float(diffs.mean()) if pairs else math.nan,
            "up": int((diffs > 0).sum()),
            "down": int((diffs < 0).sum()),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_settings_arguments(parser)
    settings = common.settings_from_args(parser.parse_args(argv))
    env = common.environment()

    common.banner("CU-Net study: data")
    common.prepare_data(settings)
    runs = {}
    for name, key, _ in CONDITIONS:
        if key not in runs:
            common.banner(f"CU-Net study: training {name} ({settings.budget_text()})")
            runs[key] = common.train_named(settings, key)
    conditions = []
    for name, key, options in CONDITIONS:
        common.banner(f"CU-Net study: predicting held-out cases with {name}")
        conditions.append(
            common.predict_and_evaluate(settings, name, runs[key], tta=False, **options)
        )

    common.banner("CU-Net study: comparison")
    out_dir = settings.out / "cunet_study"
    comparison = common.compare_conditions(settings, conditions, out_dir)
    rows = {c.name: common.per_case(c) for c in conditions}
    effects = {
        metric: paired_effect(rows["CUN"], rows["CUN+LWS"], metric)
        for metric in ("dice", "sens", "spec")
    }
    cascade_effect = {
        metric: paired_effect(rows[UNET_REFERENCE], rows["CUN"], metric)
        for metric in ("dice", "sens", "spec")
    }
    image_input_effect = {
        metric: paired_effect(rows["CUN+LWS"], rows[IMAGE_INPUT_ROW], metric)
        for metric in ("dice", "sens", "spec")
    }
    study = {
        "study": "cunet",
        "settings": settings.as_dict(),
        "environment": env,
        "runs": {key: run.as_dict() for key, run in runs.items()},
        "conditions": [c.as_dict() for c in conditions],
        "comparison": comparison,
        "per_case": rows,
        "lws_effect": effects,
        "cascade_effect": cascade_effect,
        "image_input_effect": image_input_effect,
        "image_input_row": IMAGE_INPUT_ROW,
        "unet_reference": UNET_REFERENCE,
    }
    path = common.write_json(out_dir / "study.json", study)
    print(f"\nwrote {path}")
    print(common.budget_table([runs[key] for key in dict.fromkeys(k for _, k, _ in CONDITIONS)]))
    for region in REGIONS:
        e = effects["sens"][region]
        print(
            f"LWS effect on {region.upper()} sensitivity: {e['mean_diff']:+.4f} "
            f"({e['up']} cases up, {e['down']} down of {e['n']})"
        )


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
