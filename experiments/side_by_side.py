"""The 2D and 3D methods side by side on the same held-out synthetic cases.

Every run of the two studies (trained once; reused when the studies already ran) plus the plain
3D U-Net with the two-stage recipe as a same-budget peer (BRATS-FACTS: "the studies should put
such a same-budget peer beside the papers' methods"). Rows: each model's final weights without
TTA (the like-for-like comparison), and each paper's full inference (two-stage: 8 flips x
snapshots, paired). The table adds the training steps and minutes each model had, the parameter
count and the prediction time per case.

Usage::

    python experiments/side_by_side.py [--steps 300] [--steps-3d 600] [--train-cases 16]

Writes ``<out>/side_by_side/`` (table.md, table.csv, boxplots.png, report.html, study.json).
"""

from __future__ import annotations

import argparse
from typing import Any

import common
from two_stage_study import PAIRED

#: (condition name, run key, predict options, dimensionality); names match the two studies so
#: their predictions are reused.
CONDITIONS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("U-Net (2D)", "unet2d", {}, "2D"),
    ("BFCN", "bfcn", {}, "2D"),
    ("DRN", "drn", {}, "2D"),
    ("CUN", "cunet_nolws", {}, "2D"),
    ("CUN+LWS", "cunet_lws", {}, "2D"),
    ("U-Net (3D)", "unet3d", {}, "3D"),
    ("Stage 1 alone", "stage1", {}, "3D"),
    ("Two-stage", "two_stage", {}, "3D"),
    (PAIRED, "two_stage", {"tta": True, "snapshots": True, "ensemble_mode": "paired"}, "3D"),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_settings_arguments(parser)
    parser.add_argument(
        "--max-snapshots",
        type=int,
        default=0,
        help="use only the last N snapshots in the ensemble (0: all; as two_stage_study.py)",
    )
    args = parser.parse_args(argv)
    settings = common.settings_from_args(args)
    env = common.environment()

    common.banner("side by side: data")
    common.prepare_data(settings)
    runs: dict[str, common.Run] = {}
    for _, key, _, _ in CONDITIONS:
        if key not in runs:
            common.banner(f"side by side: training {key} ({settings.budget_text()})")
            runs[key] = common.train_named(settings, key)

    conditions, dims = [], {}
    for name, key, kwargs, dim in CONDITIONS:
        if key == "stage1" and runs["stage1"].run_dir == runs["unet3d"].run_dir:
            # stage 1 is stood in for by the 3D U-Net: the row would repeat "U-Net (3D)".
            continue
        common.banner(f"side by side: {name}")
        if kwargs.get("snapshots"):
            kwargs = {**kwargs, "max_snapshots": args.max_snapshots}
        conditions.append(common.predict_and_evaluate(settings, name, runs[key], **kwargs))
        dims[name] = dim

    common.banner("side by side: comparison")
    out_dir = settings.out / "side_by_side"
    comparison = common.compare_conditions(settings, conditions, out_dir)
    study = {
        "study": "side_by_side",
        "settings": settings.as_dict(),
        "environment": env,
        "runs": {key: run.as_dict() for key, run in runs.items()},
        "conditions": [{**c.as_dict(), "dims": dims[c.name]} for c in conditions],
        "comparison": comparison,
        "per_case": {c.name: common.per_case(c) for c in conditions},
    }
    path = common.write_json(out_dir / "study.json", study)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
