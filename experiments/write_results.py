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

#: CU-Net paper, Table 1 (BraTS 2017 HGG, local test split of 42 cases), quoted for contrast.
PAPER_CUNET_TABLE1: dict[str, dict[str, float]] = {
    "U-Net": {
        "dice_wt": 0.872, "sens_wt": 0.885, "spec_wt": 0.996,
        "dice_tc": 0.779, "sens_tc": 0.811, "spec_tc": 0.999,
        "dice_et": 0.751, "sens_et": 0.829, "spec_et": 0.999,
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
    commit = env["git_commit"] + (" with uncommitted changes" if env["git_dirty"] else "")
    rows = [
        (
            "machine",
            f"{env['cpu']}, {env['logical_cpus']} logical CPUs "
            f"(torch threads: {env['torch_threads']}), GPU: {env['gpu'] or 'none'}",
        ),
        ("date", ", ".join(dates)),
        (
            "code",
            f"cascadeseg {env['cascadeseg']}, commit {commit}; Python {env['python']}, "
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
        (
            "budget",
            f"{st['minutes']:g} min of wall-clock training per model "
            "(`train.max_minutes`, validation included, preprocessing excluded), "
            f"training seed {st['seed']}",
        ),
    ]
    if st["overrides"]:
        rows.append(("extra overrides", ", ".join(f"`{o}`" for o in st["overrides"])))
    return md_table(["", ""], [(k, v) for k, v in rows], align="ll")


def section_runs(studies: dict[str, dict[str, Any] | None]) -> str:
    runs: dict[str, dict[str, Any]] = {}
    for study in studies.values():
        if study is not None:
            for run in study["runs"].values():
                runs.setdefault(run["run_dir"], run)
    if not runs:
        return ""
    rows = []
    for run in runs.values():
        s = run["summary"]
        overrides = [
            o for o in run["overrides"] if not o.startswith(("train.max_minutes=", "seed="))
        ]
        rows.append(
            (
                f"`{Path(run['run_dir']).name}`",
                f"`{run['recipe']}`",
                " ".join(f"`{o}`" for o in overrides),
                f"{run['parameters']:,}",
                s.get("epochs_done", "—"),
                s.get("steps", "—"),
                fmt(s.get("minutes"), 2),
                s.get("stop_reason", "—"),
                len(run.get("snapshots", [])),
            )
        )
    text = md_table(
        [
            "run",
            "recipe",
            "overrides",
            "parameters",
            "epochs",
            "steps",
            "minutes",
            "stopped by",
            "snapshots",
        ],
        rows,
        align="lllrrrrlr",
    )
    commands = sorted({run["command"] for run in runs.values()})
    return text + "\nTraining commands:\n\n" + code_block(commands)


def _images(doc: Path) -> Path:
    return doc.parent / "images"


def _boxplot(study: dict[str, Any], path: Path, metrics: Sequence[str], title: str) -> Path:
    from cascadeseg.evaluation.plots import boxplot_figure

    return boxplot_figure(per_case_arrays(study), path, metrics=metrics, title=title)


def section_cunet(study: dict[str, Any] | None, doc: Path) -> str:
    if study is None:
        return "**Not run** (no `experiments/out/cunet_study/study.json`).\n"
    rows = table_rows(study)
    cols = [f"{m}_{r.lower()}" for r in REGIONS for m in ("dice", "sens", "spec")]
    header = ["Method"] + [f"{r} {m}" for r in REGIONS for m in ("Dice", "Sens", "Spec")] + ["n"]
    body = [[name] + [fmt(row[c]) for c in cols] + [row["n"]] for name, row in rows.items()]
    paper = [
        [f"*paper: {name}*"] + [fmt(vals[c]) for c in cols] + ["42"]
        for name, vals in PAPER_CUNET_TABLE1.items()
    ]
    text = (
        "Mean over the held-out cases (`cascadeseg compare`); the paper's Table 1 rows "
        "(BraTS 2017, 42 real test cases) below them for contrast.\n\n"
        + md_table(header, body + paper)
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
    steps = {
        c["name"]: study["runs"][key]["summary"].get("steps", "?")
        for c in study["conditions"]
        for key in study["runs"]
        if study["runs"][key]["name"] == c["run"]
    }
    dropped = [
        r
        for r in REGIONS
        if dice_d[r] < -0.05
        and PAPER_CUNET_TABLE1["CUN+LWS"][f"dice_{r.lower()}"]
        - PAPER_CUNET_TABLE1["CUN"][f"dice_{r.lower()}"]
        > -0.05
    ]
    if dropped:
        text += (
            f"\n**Unlike the paper**, LWS cost Dice in {', '.join(dropped)}: with LWS the "
            "network over-segments (sensitivity up, specificity down), where the paper's Dice "
            "stayed within 0.02.\n"
        )
    text += (
        "\nDice moved with it: CUN+LWS minus CUN "
        + ", ".join(f"{r} {fmt(dice_d[r], sign=True)}" for r in REGIONS)
        + f" (paper: {paper_change('CUN', 'CUN+LWS', 'dice')}). Training steps each model "
        "made in the same budget: "
        + ", ".join(f"{name} {n}" for name, n in steps.items())
        + " (LWS draws its sample matrix every step, which costs time).\n"
    )
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


def section_two_stage(study: dict[str, Any] | None, doc: Path, prefix: str = "results_") -> str:
    if study is None:
        return "**Not run** (no `experiments/out/two_stage_study/study.json`).\n"
    text = ""
    if study.get("stage1_note"):
        text += f"> **Note:** {study['stage1_note']}.\n\n"
    rows = table_rows(study)
    conds = {c["name"]: c for c in study["conditions"]}
    n_test = study["settings"]["test_cases"]
    body = []
    for name, row in rows.items():
        c = conds[name]
        body.append(
            [name, c["members"], "8 flips" if c["tta"] else "—", c["et_min_voxels"] or "off"]
            + [fmt(row[f"dice_{r.lower()}"]) for r in REGIONS]
            + [fmt(mean_dice(row))]
            + [fmt(row[f"hd95_{r.lower()}"], 2) for r in REGIONS]
            + [fmt(c["predict_seconds"] / max(1, n_test), 1)]
        )
    text += md_table(
        ["Condition", "models", "TTA", "ET threshold"]
        + [f"Dice {r}" for r in REGIONS]
        + ["mean Dice"]
        + [f"HD95 {r} (mm)" for r in REGIONS]
        + ["predict s/case"],
        body,
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
    steps = {k: r["summary"].get("steps", "?") for k, r in study["runs"].items()}
    snaps = {k: len(r.get("snapshots", [])) for k, r in study["runs"].items()}
    text += (
        f"\nTraining steps in the budget: stage 1 alone {steps.get('stage1', '?')}, two-stage "
        f"{steps.get('two_stage', '?')} ({snaps.get('two_stage', '?')} snapshots kept: the "
        "recipe keeps the last epochs' weights, and only that many epochs fitted in the "
        "budget).\n"
    )
    text += (
        "\nMean Dice changes (from these numbers):\n\n"
        f"- cascade over stage 1 alone: {diff('Stage 1 alone', 'Two-stage')} (the paper claims "
        "the second stage refines the first; it gives no stage-1-only numbers);\n"
        f"- 8-flip TTA on the cascade: {diff('Two-stage', 'Two-stage + TTA')};\n"
        "- snapshot ensemble on top of TTA: "
        f"{diff('Two-stage + TTA', 'Two-stage + TTA + snapshots')}"
        ' (the paper uses both "to obtain a more robust prediction", without an ablation).\n'
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
    full = "Two-stage + TTA + snapshots"
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
            f"({tuning['n_cases']} cases, `cascadeseg tune-postprocess`, snapshots x 8 flips): "
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
        body.append(
            [name, c["dims"], inference]
            + [fmt(row[f"dice_{r.lower()}"]) for r in REGIONS]
            + [fmt(mean_dice(row))]
            + [fmt(row[f"hd95_{r.lower()}"], 2) for r in REGIONS]
            + [
                f"{run['parameters']:,}",
                run["summary"].get("steps", "—"),
                fmt(c["predict_seconds"] / max(1, n_test), 1),
            ]
        )
    text = md_table(
        ["Method", "", "inference"]
        + [f"Dice {r}" for r in REGIONS]
        + ["mean Dice"]
        + [f"HD95 {r} (mm)" for r in REGIONS]
        + ["parameters", "training steps", "predict s/case"],
        body,
    )
    best = max(rows, key=lambda n: mean_dice(rows[n]))
    text += (
        f"\nHighest mean Dice on these cases: **{best}** ({fmt(mean_dice(rows[best]))}). "
        "Every model had the same wall-clock training budget, so the columns of training steps "
        "and parameters show what each could do with it.\n"
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
    default = " (the generator's default)" if bias == tuple(SynthConfig().bias_strength) else ""
    main_page = os.path.relpath(common.REPO / "docs" / "results.md", doc.resolve().parent)
    return (
        f"- Bias field: these cases were written with `--bias-strength {bias[0]:g} {bias[1]:g}`"
        f"{default}, a field within about BrainWeb's strongest setting. The studies on the "
        f"earlier, stronger field (`0.04 0.2`) are in [docs/results.md]({main_page}).\n"
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
- Same wall-clock budget, not the same number of steps: a faster model gets more updates. This
  is the question a CPU user faces; the papers trained to convergence instead.
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
EXTRA_PAGES = (
    ("results-lesion-postprocess.md", "5. Lesion-aware post-processing"),
    ("results-snapshot-pairing.md", "6. Snapshot ensemble: paired as published, or every flip"),
)


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
        "\n## 1. CU-Net paper: U-Net vs CUN vs CUN+LWS (Table 1, Fig. 4)\n",
        section_cunet(studies["cunet"], doc),
        "\n## 2. Two-stage paper: stage 1, cascade, TTA + snapshots, ET threshold\n",
        section_two_stage(studies["two_stage"], doc),
        "\n## 3. 2D and 3D methods side by side\n",
        section_side_by_side(studies["side_by_side"], doc),
    ]
    sweep = out / "recipe_sweep" / "sweep.json"
    if sweep.is_file():
        parts += ["\n## 4. The demo recipe: a sweep at equal steps\n", section_sweep(sweep)]
    parts += [section_page(doc, name, heading) for name, heading in EXTRA_PAGES]
    parts += ["\n## How to read these numbers\n", bias_caveat(studies, doc) + CAVEATS]
    for supp in sorted(out.glob("supp_*/two_stage_study/study.json")):
        study = dict(common.read_json(supp))
        minutes = study["settings"]["minutes"]
        tag = supp.parent.parent.name
        run_rows = [
            (
                name,
                run["summary"].get("epochs_done", "—"),
                run["summary"].get("steps", "—"),
                fmt(run["summary"].get("minutes"), 2),
                len(run.get("snapshots", [])),
            )
            for name, run in study["runs"].items()
        ]
        parts += [
            f"\n## Supplement: the two-stage study with {minutes:g} min per model\n",
            f"The same study, data and seeds with a {minutes:g}-minute training budget per 3D "
            f"model (the CPU recipes' own default), run after the main studies "
            f"(`python experiments/two_stage_study.py --out experiments/out/{tag} --minutes "
            f"{minutes:g} --no-tune`, data shared with the main run). Date: "
            f"{study['environment']['date_utc']}.\n\n"
            + md_table(["run", "epochs", "steps", "minutes", "snapshots"], run_rows)
            + "\n",
            section_two_stage(study, doc, prefix=f"results_{tag}_"),
        ]
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
