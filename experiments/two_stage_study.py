"""Two-stage paper on synthetic data: stage 1 alone, the cascade, + TTA, + the paper's snapshot
ensemble, + every flip on every snapshot, and the effect of the ET post-processing threshold.

Two 3D runs with the same budget (by default the same number of optimiser steps and of training
crops, ``--steps-3d``; or the same wall-clock minutes, ``--steps 0 --minutes M``), seed and
training cases: the stage-1 network alone (see :func:`common.stage_one_spec`) and the two-stage
cascade (``two_stage_cpu`` keeping 8 snapshots, as the paper). Conditions on the held-out cases,
in this order, all without ET post-processing, with their network passes and seconds per case:

* ``Stage 1 alone``: stage-1 network, final weights, no TTA (1 pass);
* ``Two-stage``: the cascade, final weights, no TTA (1 pass);
* ``Two-stage + TTA``: the same with 8 flips (8 passes);
* ``Two-stage + TTA + snapshots (paired)``: the paper's inference (sec. 3.3): the snapshots of
  the last epochs, snapshot i with flip i (``predict --ensemble-mode paired``; 8 passes for 8
  snapshots), probabilities averaged;
* ``Two-stage + TTA + snapshots (product)``: every flip on every snapshot (``--ensemble-mode
  product``; 64 passes for 8 snapshots), what the paper's eight maps stand in for;
* ET post-processing as the paper does it (sec. 3.4: the threshold is "chosen ... depending on
  the performance of [the] validation dataset"): ``cascadeseg tune-postprocess`` on the run's
  validation fold; its threshold's held-out ET Dice is read from the sweep below (post-processing
  only relabels ET, so no second prediction is needed).

This folds in ``snapshot_pairing.py`` (paired against product on the demo's data): one run gives
every row.

The ET threshold sweep applies :func:`cascadeseg.inference.postprocess.postprocess_et` with each
candidate to the un-post-processed held-out predictions of every condition and reports the mean
ET Dice per threshold (descriptive: on the held-out cases themselves, not a tuning).

Usage::

    python experiments/two_stage_study.py [--steps-3d 600] [--train-cases 16] [--test-cases 6]
    python experiments/two_stage_study.py --steps 0 --minutes 4    # the same wall-clock minutes

Writes ``<out>/two_stage_study/`` (table.md, table.csv, boxplots.png, report.html, study.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import common
import numpy as np

#: ET thresholds swept on the held-out cases, in voxels of the source grid (1 mm^3 at scale 1);
#: the predictor's tuning candidates plus larger ones (synthetic ET components are often large).
ET_CANDIDATES: tuple[int, ...] = (0, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000)

STAGE1 = "Stage 1 alone"
CASCADE = "Two-stage"
TTA = "Two-stage + TTA"
PAIRED = "Two-stage + TTA + snapshots (paired)"
PRODUCT = "Two-stage + TTA + snapshots (product)"
#: (condition name, run key, predict options), in the table's order: each row adds one step of
#: the paper's inference to the row above, the last runs every flip on every snapshot.
CONDITIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (STAGE1, "stage1", {}),
    (CASCADE, "two_stage", {}),
    (TTA, "two_stage", {"tta": True}),
    (PAIRED, "two_stage", {"tta": True, "snapshots": True, "ensemble_mode": "paired"}),
    (PRODUCT, "two_stage", {"tta": True, "snapshots": True, "ensemble_mode": "product"}),
)
#: Run order: the costliest row (every flip on every snapshot) last, so an interrupted run has
#: the others.
RUN_ORDER: tuple[int, ...] = (0, 1, 3, 2, 4)


def et_sweep(
    cond: common.Condition, test_dir: Path, candidates: tuple[int, ...] = ET_CANDIDATES
) -> dict[str, Any]:
    """Mean ET Dice of a condition's held-out predictions per ET threshold.

    Returns:
        ``{"mean_dice": {threshold: dice}, "best": threshold, "cases": [{case, pred_et_voxels,
        ref_et_voxels, dice}]}``; thresholds are voxels of the source grid.
    """
    from cascadeseg.data.labels import ET, to_internal
    from cascadeseg.data.layouts import discover_cases
    from cascadeseg.data.nifti import load_nifti
    from cascadeseg.evaluation.evaluate import detect_convention, find_predictions
    from cascadeseg.inference.tuning import et_stats, tune_et_threshold

    predictions = find_predictions(cond.pred_dir)
    stats, cases = [], []
    for ref in discover_cases(test_dir):
        ref_raw, _, _ = load_nifti(ref.files["seg"])
        ref_label = to_internal(ref_raw, ref.label_convention)
        pred_raw, _, _ = load_nifti(predictions[ref.case_id])
        values = {int(v) for v in np.unique(pred_raw)}
        pred_label = to_internal(pred_raw, detect_convention(values, ref.label_convention))
        s = et_stats(pred_label, ref_label)
        stats.append(s)
        cases.append(
            {
                "case": ref.case_id,
                "pred_et_voxels": s.pred_voxels,
                "ref_et_voxels": int(np.count_nonzero(ref_label == ET)),
                "dice": s.dice,
            }
        )
    result = tune_et_threshold(stats, candidates)
    return {
        "mean_dice": {str(k): v for k, v in result.mean_dice.items()},
        "best": result.best,
        "cases": cases,
    }


def tune_on_validation(settings: common.Settings, run: common.Run) -> dict[str, Any]:
    """``cascadeseg tune-postprocess`` on the run's validation fold (paired snapshot ensemble)."""
    argv: list[Any] = ["tune-postprocess", "--model", run.run_dir, "--data", settings.train_dir]
    argv += ["--cases", "val", "--device", "cpu", "--candidates", *ET_CANDIDATES]
    if not settings.progress:
        argv.append("--no-progress")
    line = common.command_line(argv)
    stored = run.run_dir / "postprocess.json"
    mine = run.run_dir / "experiment_tune.json"
    newest = max(p.stat().st_mtime for p in [run.last, *run.snapshots])
    if (
        stored.is_file()
        and mine.is_file()
        and common.read_json(mine).get("command") == line
        and stored.stat().st_mtime > newest
    ):
        print(f"tune-postprocess: reusing {stored}")
        seconds = float(common.read_json(mine)["wall_seconds"])
    else:
        seconds = common.cascadeseg(argv, settings)
        common.write_json(mine, {"command": line, "wall_seconds": seconds})
    record = common.read_json(stored)
    record["command"] = line
    record["seconds"] = seconds
    return dict(record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_settings_arguments(parser)
    parser.add_argument(
        "--no-tune", action="store_true", help="skip the validation-tuned ET post-processing"
    )
    parser.add_argument(
        "--max-snapshots",
        type=int,
        default=0,
        help="use only the last N snapshots in the ensemble (0: all the run kept)",
    )
    args = parser.parse_args(argv)
    settings = common.settings_from_args(args)
    env = common.environment()

    common.banner("two-stage study: data")
    common.prepare_data(settings)
    common.banner(f"two-stage study: training stage 1 alone ({settings.budget_text()})")
    stage1 = common.train_named(settings, "stage1")
    common.banner(f"two-stage study: training the two-stage cascade ({settings.budget_text()})")
    cascade = common.train_named(settings, "two_stage")
    runs = {"stage1": stage1, "two_stage": cascade}

    done: dict[int, common.Condition] = {}
    for i in RUN_ORDER:
        name, key, kwargs = CONDITIONS[i]
        if kwargs.get("snapshots"):
            kwargs = {**kwargs, "max_snapshots": args.max_snapshots}
        common.banner(f"two-stage study: predicting held-out cases, {name}")
        done[i] = common.predict_and_evaluate(settings, name, runs[key], **kwargs)
    conditions = [done[i] for i in range(len(CONDITIONS))]

    tuning: dict[str, Any] | None = None
    if not args.no_tune:
        common.banner("two-stage study: ET threshold tuned on the validation fold (sec. 3.4)")
        tuning = tune_on_validation(settings, cascade)
        # No second prediction: post-processing only relabels ET (postprocess_et on the final
        # label map, as the predictor does), so the held-out ET Dice at the chosen threshold is
        # exactly the sweep's value below (its candidates are the tuning candidates).

    common.banner("two-stage study: ET threshold sweep on the held-out cases")
    sweeps = {c.name: et_sweep(c, settings.test_dir) for c in conditions}

    common.banner("two-stage study: comparison")
    out_dir = settings.out / "two_stage_study"
    comparison = common.compare_conditions(settings, conditions, out_dir)
    study = {
        "study": "two_stage",
        "settings": settings.as_dict(),
        "environment": env,
        "runs": {key: run.as_dict() for key, run in runs.items()},
        "stage1_note": stage1.note,
        "conditions": [c.as_dict() for c in conditions],
        "comparison": comparison,
        "per_case": {c.name: common.per_case(c) for c in conditions},
        "et_candidates": list(ET_CANDIDATES),
        "et_sweep": sweeps,
        "et_tuning": tuning,
    }
    path = common.write_json(out_dir / "study.json", study)
    print(f"\nwrote {path}")
    print(common.budget_table(list(runs.values())))
    for c in conditions:
        print(f"{c.name}: {c.passes} passes, {c.seconds_per_case:.1f} s per case")
    for name, sweep in sweeps.items():
        best = sweep["best"]
        print(
            f"{name}: ET Dice {sweep['mean_dice']['0']:.4f} without post-processing, "
            f"best threshold on held-out {best} voxels -> {sweep['mean_dice'][str(best)]:.4f}"
        )


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
