"""Recipe sweep for the demo: variants of a CPU recipe trained for the same steps or minutes.

How the demo recipe (``two_stage_cpu``) was chosen. Every variant trains on the demo's
training cases (``cascadeseg demo``'s seeds: 16 cases, seed 0; with ``--bias-strength`` other
than the generator's default, those seeds with that bias field), then predicts 12 held-out
cases (seed 200000, never trained on) with its final weights and no TTA, and is scored with
the official metrics. Two budgets:

* ``--steps N`` (default): the same number of optimiser steps, not the same minutes, so that
  other jobs on the machine change the wall time but not the result;
* ``--minutes M``: the same wall-clock budget, as the demo trains (the learning-rate decay follows
  the spent budget). Run it alone on the machine: other jobs change the number of steps.

Seconds per step are reported beside the Dice so the cost of a variant is visible.

Usage::

    python experiments/recipe_sweep.py [--steps 200 | --minutes 7] [--variants base,s2x1,...]
        [--train-cases 16] [--out experiments/out/recipe_sweep]

Writes ``<out>/`` (one folder per variant and budget, ``sweep.json``, ``table.md``). A variant
already scored is reused (delete its folder to run it again).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def _variant(
    what: str, dropout: float, lr: float, fg: float, *more: str, n4: bool = False, bias: float = 0.0
) -> tuple[str, list[str]]:
    """(what it changes, config overrides) of a variant; the swept values come first. The first
    three rounds ran without N4 bias correction and without bias-field augmentation (``n4``
    and ``bias``, the share of augmented crops, keep them reproducible whatever the recipe
    says)."""
    return what, [
        f"model.args.dropout={dropout}",
        f"optim.lr={lr}",
        f"data.foreground_prob={fg}",
        f"data.n4={str(n4).lower()}",
        f"data.bias_field_prob={bias}",
        *more,
    ]


def _s2x1(
    what: str, lr: float, *more: str, n4: bool = False, bias: float = 0.0
) -> tuple[str, list[str]]:
    """A second-round variant: the first round's best (dropout 0, a third of the crops on
    tumour) with stage 2 as wide as stage 1, at learning rate ``lr``."""
    return _variant(
        what, 0.0, lr, 0.33, "model.args.stage2_width_factor=1", *more, n4=n4, bias=bias
    )


#: name -> (what it changes, config overrides). ``base`` is the recipe as it was before the sweep
#: (Adam 1e-3, dropout 0.1, 48^3 crops, batch 2, half the crops centred on tumour); every variant
#: names all three swept values, so the table stays valid whatever the recipe says now.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": _variant("recipe before the sweep", 0.1, 1e-3, 0.5),
    "lr2e-3": _variant("lr 2e-3", 0.1, 2e-3, 0.5),
    "no_dropout": _variant("dropout 0", 0.0, 1e-3, 0.5),
    "fg0.33": _variant("a third of the crops on tumour", 0.1, 1e-3, 0.33),
    "lr2e-3_no_dropout": _variant("lr 2e-3, dropout 0", 0.0, 2e-3, 0.5),
    "lr3e-3_no_dropout": _variant("lr 3e-3, dropout 0", 0.0, 3e-3, 0.5),
    "lr2e-3_no_dropout_fg0.33": _variant("lr 2e-3, dropout 0, a third on tumour", 0.0, 2e-3, 0.33),
    # Second round, at an equal wall-clock budget (--minutes): what buys more steps.
    "s2x1": _s2x1("stage 2 width x1 (not x2)", 2e-3),
    "s2x1_lr3e-3": _s2x1("s2x1, lr 3e-3", 3e-3),
    "s2x1_p64": _s2x1("s2x1, 64^3 crops", 2e-3, "data.patch_size=[64,64,64]"),
    **{
        f"s2x1_s1first{share}": _s2x1(
            f"s2x1, stage 1 alone for the first {share:.0%} of the budget",
            2e-3,
            f"train.stage1_first={share}",
        )
        for share in (0.3, 0.5)
    },
    **{
        f"s2x1_lr3e-3_bce{w}": _s2x1(
            f"s2x1, lr 3e-3, cross-entropy weight {w} (Dice 1)", 3e-3, f"loss.bce_weight={w}"
        )
        for w in (3, 10)
    },
    # Third round: N4 bias-field correction in preprocessing (the recipe's N4 settings).
    "s2x1_lr3e-3_bce3_n4": _s2x1(
        "s2x1, lr 3e-3, cross-entropy weight 3, N4", 3e-3, "loss.bce_weight=3", n4=True
    ),
    "s2x1_lr3e-3_bce3_n4t1ce": _s2x1(
        "s2x1, lr 3e-3, cross-entropy weight 3, N4 on T1ce only",
        3e-3,
        "loss.bce_weight=3",
        "data.n4_channels=[2]",
        n4=True,
    ),
    # Fourth round: a random smooth bias field on half of the training crops.
    "s2x1_lr3e-3_bce3_bias0.5": _s2x1(
        "s2x1, lr 3e-3, cross-entropy weight 3, bias-field augmentation on half the crops",
        3e-3,
        "loss.bce_weight=3",
        bias=0.5,
    ),
    # Fifth round (generator with a BrainWeb-like bias field): coarser voxels, so that a crop
    # of the same voxels (same cost) holds more of the brain.
    "s2x1_lr3e-3_bce3_3mm": _s2x1(
        "s2x1, lr 3e-3, cross-entropy weight 3, 3 mm voxels (48^3 crops = 144 mm)",
        3e-3,
        "loss.bce_weight=3",
        "data.target_spacing=[3,3,3]",
    ),
    # Sixth round (a faster CPU: 0.39 s a step instead of 1 s): 60 iterations an epoch, so the
    # time budget ends the run instead of the 600-step cap of 30 x 20; run with --train-cases
    # 16 and 32 (one --out each) to measure more training cases at that step count.
    "s2x1_lr3e-3_bce3_ipe60": _s2x1(
        "s2x1, lr 3e-3, cross-entropy weight 3, 60 iterations an epoch (the budget ends the run)",
        3e-3,
        "loss.bce_weight=3",
        "train.iters_per_epoch=60",
        "data.crop_overhang=0",
    ),
    # Seventh round: crops may reach half their size past the brain box, so the brain's
    # periphery (cortex, posterior fossa) is in crops about half as often as its centre rather
    # than a few percent as often (data.crop_overhang).
    "s2x1_lr3e-3_bce3_ipe60_overhang0.5": _s2x1(
        "s2x1, lr 3e-3, cross-entropy weight 3, 60 iterations an epoch, crop centres uniform "
        "over the brain box (crop overhang 0.5)",
        3e-3,
        "loss.bce_weight=3",
        "train.iters_per_epoch=60",
        "data.crop_overhang=0.5",
    ),
    # The overhang puts fewer crops on tumour; half the crops centred on tumour restores that.
    "s2x1_lr3e-3_bce3_ipe60_overhang0.5_fg0.5": _variant(
        "s2x1, lr 3e-3, cross-entropy weight 3, 60 iterations an epoch, crop overhang 0.5, "
        "half the crops on tumour",
        0.0,
        3e-3,
        0.5,
        "model.args.stage2_width_factor=1",
        "loss.bce_weight=3",
        "train.iters_per_epoch=60",
        "data.crop_overhang=0.5",
    ),
}


def _mean(summary: dict[str, Any], key: str) -> float:
    return float(summary["metrics"][key]["mean"])


def run_variant(
    name: str,
    recipe: str,
    overrides: list[str],
    steps: int,
    out: Path,
    train_dir: Path,
    test_dir: Path,
    minutes: float | None = None,
) -> dict[str, Any]:
    """Train one variant for ``steps`` steps, predict and score the held-out cases.

    With ``minutes``, train for that wall-clock budget instead (the demo's way: the learning-rate
    decay follows the spent budget), in the folder ``<name>@<minutes>min``.
    """
    from cascadeseg.config import apply_overrides, load_config
    from cascadeseg.evaluation.evaluate import evaluate
    from cascadeseg.inference import PredictOptions, load_models, predict
    from cascadeseg.training.trainer import train

    folder = out / (name if minutes is None else f"{name}@{minutes:g}min")
    done = folder / "result.json"
    if done.is_file():
        return dict(json.loads(done.read_text()))
    cfg = load_config(recipe, ["seed=0", "data.folds=5", *overrides])
    if minutes is None:
        epochs = max(1, round(steps / cfg.train.iters_per_epoch))
        budget = ["train.max_minutes=null", "train.time_schedule=false", f"train.epochs={epochs}"]
    else:
        # As the demo runs it: the recipe's epochs (they set the warm-up's share of the run and
        # cap the steps), the budget ends the run and drives the decay.
        budget = [f"train.max_minutes={minutes}", "train.time_schedule=true"]
    cfg = apply_overrides(cfg, [*budget, "train.val_every=1000", "train.snapshots=1"])
    train(cfg, train_dir, folder / "run")
    models = load_models([folder / "run" / "checkpoints" / "last.pt"])
    predict(models, test_dir, folder / "pred", PredictOptions(tta=False, overwrite=True))
    evaluate(folder / "pred", test_dir, folder / "eval", workers=2, print_table=False)
    row = score(name, recipe, overrides, folder)
    row["budget_minutes"] = minutes
    done.write_text(json.dumps(row, indent=2) + "\n")
    return row


def score(name: str, recipe: str, overrides: list[str], folder: Path) -> dict[str, Any]:
    """The sweep row of a trained, predicted and evaluated variant folder."""
    run = json.loads((folder / "run" / "summary.json").read_text())
    summary = json.loads((folder / "eval" / "summary.json").read_text())
    return {
        "variant": name,
        "recipe": recipe,
        "overrides": overrides,
        "steps": int(run["steps"]),
        "train_minutes": float(run["minutes"]),
        "seconds_per_step": round(float(run["minutes"]) * 60 / max(1, int(run["steps"])), 3),
        "dice": {r: round(_mean(summary, f"dice_{r}"), 3) for r in ("wt", "tc", "et")},
        "hd95_wt": round(_mean(summary, "hd95_wt"), 1),
        "cases": int(summary["metrics"]["dice_wt"]["n"]),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown tables of the sweep: one per budget (equal steps; each wall-clock budget)."""
    groups: dict[float | None, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r.get("budget_minutes"), []).append(r)
    parts = []
    for minutes, group in sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0)):
        if len(groups) > 1:
            parts.append(
                f"Same number of steps ({', '.join(sorted({str(r['steps']) for r in group}))}):\n"
                if minutes is None
                else f"Same wall-clock budget ({minutes:g} min of training each):\n"
            )
        lines = [
            "| variant | change | steps | s/step | WT Dice | TC Dice | ET Dice | mean "
            "| WT HD95 (mm) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in group:
            d = r["dice"]
            mean = statistics.mean(d.values())
            lines.append(
                f"| `{r['variant']}` | {VARIANTS.get(r['variant'], ('', []))[0]} | {r['steps']} | "
                f"{r['seconds_per_step']:.2f} | {d['wt']:.3f} | {d['tc']:.3f} | {d['et']:.3f} | "
                f"{mean:.3f} | {r['hd95_wt']:.1f} |"
            )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="two_stage_cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="train each variant for this wall-clock budget instead of --steps (run it alone "
        "on the machine: other jobs change the number of steps)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/recipe_sweep"))
    parser.add_argument("--train-cases", type=int, default=16)
    parser.add_argument("--test-cases", type=int, default=12)
    parser.add_argument(
        "--bias-strength",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="the generator's bias-field strength (default: the generator's; rounds 1-4 ran "
        "with 0.04 0.2 in experiments/out/recipe_sweep)",
    )
    args = parser.parse_args()

    from dataclasses import replace

    from cascadeseg.data.synth import SynthConfig, synthesize_dataset

    synth = SynthConfig()
    if args.bias_strength is not None:
        synth = replace(synth, bias_strength=tuple(args.bias_strength))

    train_dir, test_dir = args.out / "data" / "train", args.out / "data" / "test"
    # The demo's training cases (seed 0) and held-out cases from a seed no run trains on.
    for folder, count, seed in (
        (train_dir, args.train_cases, 0),
        (test_dir, args.test_cases, 200_000),
    ):
        marker = folder / ".bias_strength.json"
        wanted = json.dumps(list(synth.bias_strength))
        if folder.is_dir() and marker.is_file() and marker.read_text() != wanted:
            raise SystemExit(
                f"{folder} was written with bias strength {marker.read_text()}, not {wanted}: "
                "use another --out"
            )
        if not folder.is_dir():
            synthesize_dataset(
                folder, count, seed=seed, layout="brats2021", workers=2, config=synth
            )
            marker.write_text(wanted)
    # Rows of earlier invocations stay in sweep.json (one row per variant and budget).
    index = args.out / "sweep.json"
    rows = list(json.loads(index.read_text())) if index.is_file() else []
    for name in args.variants.split(","):
        row = run_variant(
            name,
            args.recipe,
            VARIANTS[name][1],
            args.steps,
            args.out,
            train_dir,
            test_dir,
            minutes=args.minutes,
        )
        key = (row["variant"], row.get("budget_minutes"))
        rows = [r for r in rows if (r["variant"], r.get("budget_minutes")) != key] + [row]
        index.write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "table.md").write_text(table(rows))
        print(table(rows), flush=True)


if __name__ == "__main__":
    main()
