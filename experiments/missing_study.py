"""Missing sequences (issue 21): a model trained with sequence dropout against an ordinary model
given substitutes, on every non-empty subset of FLAIR, T1, T1ce and T2.

Three 3D runs with the same budget (the same optimiser steps and training crops,
``--steps-3d``; or the same wall-clock minutes, ``--steps 0 --minutes M``), seed and training
cases:

* ``ordinary``: the two-stage cascade's CPU recipe (``two_stage_cpu``), no sequence dropout;
* ``dropout-mask``: ``two_stage_missing_cpu`` (sequence dropout, availability channels);
* ``dropout-zero``: the same with ``data.missing_fill=zero`` (zero-filled, no channels).

Each held-out case is read and preprocessed once; for each of the 15 non-empty subsets of the
four sequences (all four included) the others are left out of the network input, and it is
predicted in four configurations: ``dropout-mask``, ``dropout-zero``, ``ordinary + zero``
(``predict --substitute-missing zero``) and ``ordinary + sibling`` (``--substitute-missing
sibling``: the nearest present sibling, :data:`cascadeseg.data.missing.SUBSTITUTE_ORDER`). The
input is built by the predictor itself from the subset (``predict_preprocessed(...,
missing=...)``, the path ``cascadeseg predict --missing`` takes), final weights, no
post-processing (as ``--et-min-voxels 0 --min-lesion-voxels 0`` in the other studies), flip TTA
only with ``--tta``. Each prediction is restored to the case's own grid and scored with
:func:`cascadeseg.evaluation.metrics.region_dice` (Dice WT, TC, ET).

Usage::

    python experiments/missing_study.py [--steps-3d 600] [--train-cases 16] [--test-cases 6]
    python experiments/missing_study.py --reuse         # trained runs kept, predictions redone
    python experiments/missing_study.py --quick         # tiny smoke run, out/missing_quick

Writes ``<out>/missing_study/study.json`` (mean and per-case Dice per subset, configuration and
region; the runs' steps and minutes), ``<out>/missing_study/subsets.png`` (the heat map) and the
page ``--doc`` (default ``docs/results-missing.md``, with the heat map in
``docs/images/results_missing_subsets.png``; ``missing_page.py``), which ``docs/results.md``
embeds.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import numpy as np

SEQUENCES = ("flair", "t1", "t1ce", "t2")
SHOWN = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}
REGIONS = ("wt", "tc", "et")

#: run key -> (recipe, overrides): the same recipe but for sequence dropout and its fill.
RUNS: dict[str, tuple[str, list[str]]] = {
    # The ordinary model with the dropout recipe's batch Dice, single stage-2 decoder at
    # inference, 48^3 crops throughout, case balance 0.5, nearest-neighbour labels and the last
    # iterate's weights (two_stage_missing_cpu keeps these; two_stage_cpu computes its Dice per
    # crop, averages its two decoders and starts on 32^3 crops since 2026-11-27, and draws kinds
    # of tumour equally, trains on soft targets and averages its weights since 2026-11-28): the
    # runs differ in the dropout alone.
    "ordinary": (
        "two_stage_cpu",
        [
            "loss.dice_batch=true",
            "model.args.average_decoders=false",
            "data.early_patch_size=null",
            "data.early_patch_end=0",
            "data.case_balance=0.5",
            "data.label_resampling=nearest",
            "train.ema_width=0",
        ],
    ),
    "dropout_mask": ("two_stage_missing_cpu", []),  # the recipe's fill: mask
    "dropout_zero": ("two_stage_missing_cpu", ["data.missing_fill=zero"]),
}
#: Run directories under ``<out>/runs/`` (apart from the other studies' runs).
RUN_DIRS = {key: f"missing_{key}" for key in RUNS}
#: (configuration, run key, --substitute-missing), in the tables' order.
CONFIGS: tuple[tuple[str, str, str | None], ...] = (
    ("dropout-mask", "dropout_mask", None),
    ("dropout-zero", "dropout_zero", None),
    ("ordinary + zero", "ordinary", "zero"),
    ("ordinary + sibling", "ordinary", "sibling"),
)
#: ``--quick``: a tiny smoke run of every step (quarter-scale cases at 4 mm, 4 steps a model).
QUICK = {
    "out": common.EXPERIMENTS / "out" / "missing_quick",
    "train_cases": 5,
    "test_cases": 2,
    "scale": 0.25,
    "steps_3d": 4,
    "overrides": ["data.target_spacing=null", "data.patch_size=[32,32,32]"],
}


def subsets() -> list[tuple[str, ...]]:
    """The 15 non-empty subsets of the four sequences, all four first, then by size and in
    the sequences' order."""
    return [
        combo
        for k in range(len(SEQUENCES), 0, -1)
        for combo in itertools.combinations(SEQUENCES, k)
    ]


def subset_label(present: Sequence[str], aligned: bool = False) -> str:
    """``("flair", "t1", "t2")`` -> ``"FLAIR T1 -- T2"`` (a missing sequence as ``--``);
    ``aligned``: each sequence's place as wide as its name (``"FLAIR T1 --   T2"``)."""
    return " ".join(
        (SHOWN[s] if s in present else "--").ljust(len(SHOWN[s]) if aligned else 0)
        for s in SEQUENCES
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The shared study options, ``--tta``, ``--reuse`` and ``--quick`` (whose sizes apply
    where an option is not given)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_settings_arguments(parser)
    parser.add_argument(
        "--tta", action="store_true", help="8-flip TTA on every prediction (default: off)"
    )
    parser.add_argument(
        "--doc",
        type=Path,
        default=common.REPO / "docs" / "results-missing.md",
        help="the results page to write (docs/results.md embeds it)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep a finished run (summary.json and checkpoints/last.pt) even if it was trained "
        "by another command: a rerun only predicts and scores",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run: 5 + 2 quarter-scale cases, 4 steps a model, out "
        "experiments/out/missing_quick (options given still win)",
    )
    quick, _ = parser.parse_known_args(argv)
    if quick.quick:
        parser.set_defaults(**QUICK)
    return parser.parse_args(argv)


def load_runs(runs: dict[str, common.Run]) -> dict[str, list[Any]]:
    """Each run's final weights, loaded once on the CPU."""
    from cascadeseg.inference import load_models

    return {key: load_models([run.last], "cpu") for key, run in runs.items()}


def predict_label(pre: Any, members: list[Any], options: Any, missing: tuple[str, ...]) -> Any:
    """The ``(X, Y, Z)`` internal label map of a preprocessed case without ``missing``, on the
    case's own grid (restored as ``predict`` does; no post-processing)."""
    from cascadeseg.data.labels import probabilities_to_label
    from cascadeseg.data.preprocess import restore_to_source
    from cascadeseg.inference.predictor import predict_preprocessed

    mean, _, _ = predict_preprocessed(pre, members, options, missing=missing)
    return probabilities_to_label(restore_to_source(mean, pre, order=1), options.threshold)


def score_case(
    case: Any, models: dict[str, list[Any]], tta: bool
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, list[float]]]:
    """Dice per subset and configuration of one case, and the seconds of each prediction.

    Returns:
        ``({subset label: {configuration: {wt, tc, et}}}, {configuration: [seconds]})``.
    """
    from cascadeseg.data.labels import label_to_regions
    from cascadeseg.data.preprocess import preprocess_case
    from cascadeseg.evaluation.metrics import region_dice
    from cascadeseg.inference import options_from_recipe

    reference = label_to_regions(case.label)
    unlabelled = case.with_label(None)
    preprocessed: dict[str, Any] = {}  # one preprocessing per distinct recipe (all alike here)
    dice: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    for present in subsets():
        missing = tuple(s for s in SEQUENCES if s not in present)
        row: dict[str, dict[str, float]] = {}
        done: dict[tuple[str, str | None], dict[str, float]] = {}
        for name, key, substitute in CONFIGS:
            members = models[key]
            recipe = repr(members[0].preprocess.to_dict())
            if recipe not in preprocessed:
                preprocessed[recipe] = preprocess_case(unlabelled, members[0].preprocess)
            # All four present: ordinary + zero and + sibling are the same prediction.
            same = (key, substitute if missing else None)
            if same not in done:
                options = options_from_recipe(
                    members,
                    {"tta": tta},
                    device="cpu",
                    progress=False,
                    substitute_missing=substitute,
                )
                start = time.perf_counter()
                label = predict_label(preprocessed[recipe], members, options, missing)
                seconds[name].append(time.perf_counter() - start)
                values = region_dice(label_to_regions(label), reference)
                done[same] = {r: float(v) for r, v in zip(REGIONS, values)}
            row[name] = done[same]
        dice[subset_label(present)] = row
    return dice, seconds


def measure(
    settings: common.Settings, runs: dict[str, common.Run], tta: bool
) -> tuple[dict[str, Any], dict[str, float], int]:
    """Every held-out case scored per subset and configuration.

    Returns:
        ``(per_case, seconds, n)``: ``{subset: {configuration: [{case, dice_wt, dice_tc,
        dice_et}]}}``, mean seconds per prediction of each configuration (preprocessing
        excluded, restoring to the case's grid included) and the number of cases.
    """
    from cascadeseg.data.layouts import discover_cases, read_case

    models = load_runs(runs)
    refs = discover_cases(settings.test_dir)
    per_case: dict[str, Any] = {
        subset_label(p): {name: [] for name, _, _ in CONFIGS} for p in subsets()
    }
    times: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    for i, ref in enumerate(refs, 1):
        start = time.perf_counter()
        case = read_case(ref)
        dice, seconds = score_case(case, models, tta)
        for label, row in dice.items():
            for name, values in row.items():
                per_case[label][name].append(
                    {"case": ref.case_id, **{f"dice_{r}": values[r] for r in REGIONS}}
                )
        for name, s in seconds.items():
            times[name] += s
        print(
            f"case {i}/{len(refs)} {ref.case_id}: {time.perf_counter() - start:.1f} s", flush=True
        )
    mean_seconds = {name: float(np.mean(s)) if s else float("nan") for name, s in times.items()}
    return per_case, mean_seconds, len(refs)


def mean_dice(per_case: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{subset: {configuration: {wt, tc, et, mean}}}``: means over the held-out cases (``mean``:
    of the three regions)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, row in per_case.items():
        out[label] = {}
        for name, cases in row.items():
            means = {r: float(np.mean([c[f"dice_{r}"] for c in cases])) for r in REGIONS}
            means["mean"] = float(np.mean([means[r] for r in REGIONS]))
            out[label][name] = means
    return out


def substitutions() -> dict[str, dict[str, str]]:
    """``{subset: {missing sequence: its substitute}}`` of ``ordinary + sibling``."""
    from cascadeseg.data.missing import substitute_missing

    image = np.zeros((len(SEQUENCES), 1, 1, 1), np.float32)
    out = {}
    for present in subsets():
        missing = [s for s in SEQUENCES if s not in present]
        out[subset_label(present)] = substitute_missing(image, missing, "sibling")[1]
    return out


def heatmap(study: dict[str, Any], path: Path) -> Path:
    """The heat map of a study: rows the 15 subsets, columns each configuration's WT, TC, ET
    mean Dice, values written in the cells, one colour scale (0 to 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in study["configs"]]
    rows = [s["label"] for s in study["subsets"]]
    means = study["mean_dice"]
    values = np.array([[means[r][n][g] for n in names for g in REGIONS] for r in rows], dtype=float)
    shown = [subset_label(s["present"], aligned=True) for s in study["subsets"]]
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * values.shape[1], 1.6 + 0.36 * len(rows)))
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="black" if v > 0.6 else "white")  # fmt: skip
    ax.set_xticks(range(values.shape[1]), [g.upper() for _ in names for g in REGIONS], fontsize=8)
    ax.set_yticks(range(len(rows)), shown, fontsize=8, family="monospace")
    for k, name in enumerate(names):
        ax.text(k * 3 + 1, -0.9, name, ha="center", va="bottom", fontsize=8)
        if k:
            ax.axvline(k * 3 - 0.5, color="white", linewidth=2)
    ax.set_ylabel("sequences present")
    tta = "8-flip TTA" if study["tta"] else "no TTA"
    ax.set_title(
        f"Mean Dice on {study['test_cases']} held-out cases per subset of sequences ({tta})",
        fontsize=9,
        pad=22,
    )
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="mean Dice")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train_runs(settings: common.Settings, reuse: bool) -> dict[str, common.Run]:
    """The three runs (trained, or reused: see :func:`common.train_run`)."""
    runs = {}
    for key, (recipe, overrides) in RUNS.items():
        common.banner(f"missing study: training {key} ({recipe}; {settings.budget_text()})")
        runs[key] = common.train_run(
            settings, RUN_DIRS[key], recipe, overrides, reuse_finished=reuse
        )
    return runs


def dropout_of(run: common.Run) -> dict[str, Any]:
    """The sequence dropout a run trained with, from its saved config (rate 0: none)."""
    from cascadeseg.config import load_config

    data = load_config(run.run_dir / "config.yaml").data
    return {
        "prob": data.sequence_dropout,
        "max_dropped": data.sequence_dropout_max,
        "start": data.sequence_dropout_start,
        "end": data.sequence_dropout_end,
        "fill": data.missing_fill,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = common.settings_from_args(args)
    env = common.environment()
    common.banner("missing study: data")
    common.prepare_data(settings)
    runs = train_runs(settings, args.reuse)
    common.banner(f"missing study: 15 subsets x {len(CONFIGS)} configurations per held-out case")
    per_case, seconds, n = measure(settings, runs, args.tta)
    given = sys.argv[1:] if argv is None else argv
    study = {
        "study": "missing",
        "command": "python experiments/missing_study.py " + shlex.join(given),
        "settings": settings.as_dict(),
        "environment": env,
        "tta": bool(args.tta),
        "test_cases": n,
        "runs": {key: {**run.as_dict(), "dropout": dropout_of(run)} for key, run in runs.items()},
        "configs": [{"name": c, "run": k, "substitute": s} for c, k, s in CONFIGS],
        "subsets": [{"label": subset_label(p), "present": list(p)} for p in subsets()],
        "substituted": substitutions(),
        "mean_dice": mean_dice(per_case),
        "per_case": per_case,
        "seconds_per_prediction": seconds,
    }
    out_dir = settings.out / "missing_study"
    path = common.write_json(out_dir / "study.json", study)
    figure = heatmap(study, out_dir / "subsets.png")
    import missing_page  # imports this module: not at the top

    page = missing_page.write_page(study, args.doc)
    print(f"\nwrote {path}, {figure} and {page}")
    print(common.budget_table(list(runs.values())))
    print(f"{'sequences':<20}" + "".join(f"{c:>20}" for c, _, _ in CONFIGS))
    for label, row in study["mean_dice"].items():
        print(f"{label:<20}" + "".join(f"{row[c]['mean']:>20.3f}" for c, _, _ in CONFIGS))
    print("(mean Dice of WT, TC, ET; " + ("8-flip TTA)" if args.tta else "no TTA)"))


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
