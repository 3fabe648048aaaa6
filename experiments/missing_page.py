"""The page ``docs/results-missing.md`` from ``missing_study.py``'s ``study.json`` (every figure
comes from the JSON); ``docs/results.md`` embeds it (``write_results.EXTRA_PAGES``).

Usage::

    python experiments/missing_page.py experiments/out/missing_study/study.json [--doc PAGE]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import common
import missing_study
import numpy as np
from write_results import code_block, fmt, md_table, run_figures

TITLE = "# Missing sequences: one model for any subset of FLAIR, T1, T1ce, T2\n"

#: The issue's bound on what sequence dropout may cost with all four sequences (issue 21).
ALL_FOUR_BOUND = 0.01


def runs_table(study: dict[str, Any]) -> str:
    """The missing study's three runs: recipe, fill, steps, minutes, s/step."""
    rows = []
    for key, run in study["runs"].items():
        f = run_figures(run)
        extra = [o for o in run["overrides"] if o.startswith("data.missing_fill")]
        rows.append(
            [
                key.replace("_", "-"),
                f"`{run['recipe']}`" + (f" `{extra[0]}`" if extra else ""),
                f["steps"] if f["steps"] is not None else "—",
                fmt(f["minutes"], 1),
                fmt(f["seconds_per_step"], 2),
            ]
        )
    return md_table(["run", "recipe", "steps", "minutes", "s/step"], rows, align="llrrr")


def _dropout_words(study: dict[str, Any]) -> str:
    """How the dropout runs dropped sequences, in words (from the study's record of them)."""
    d = study["runs"]["dropout_mask"].get("dropout")
    if not d:  # studies from before the record: the recipe of then
        return "half the crops lose 1 to 3 sequences"
    share = "half the" if d["prob"] == 0.5 else f"{d['prob']:.0%} of the"
    words = f"{share} crops lose 1 to {d['max_dropped']} sequences"
    if d["start"] > 0 or d["end"] < 1:
        window = (
            f"over the first {d['end']:.0%} of the run"
            if d["start"] == 0
            else f"from {d['start']:.0%} to {d['end']:.0%} of the run"
        )
        words = f"{window} {words}, the other steps train on complete crops"
    return words


def _relative(path: str) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(common.REPO))
    except ValueError:
        return str(path)


def all_four_rows(study: dict[str, Any]) -> list[list[str]]:
    """Rows of the all-four comparison: per region and mean, dropout-mask, the ordinary model,
    their difference and whether dropout-mask loses at most :data:`ALL_FOUR_BOUND`."""
    full = next(s["label"] for s in study["subsets"] if len(s["present"]) == 4)
    ordinary = next(c["name"] for c in study["configs"] if c["run"] == "ordinary")
    means = study["mean_dice"][full]
    rows = []
    for key, name in (("wt", "WT"), ("tc", "TC"), ("et", "ET"), ("mean", "mean")):
        a, b = float(means["dropout-mask"][key]), float(means[ordinary][key])
        rows.append(
            [
                name,
                fmt(a),
                fmt(b),
                fmt(a - b, sign=True),
                "yes" if a - b >= -ALL_FOUR_BOUND else "no",
            ]
        )
    return rows


def body(study: dict[str, Any], doc: Path) -> str:
    """The page's text: mean Dice per subset of sequences and configuration, the heat map
    (written into ``images/`` beside ``doc``), dropout-mask against the ordinary model with all
    four sequences, the command."""
    names = [c["name"] for c in study["configs"]]
    means = study["mean_dice"]
    env = study.get("environment", {})
    tta = "with 8-flip TTA" if study["tta"] else "without TTA"
    body = []
    for subset in study["subsets"]:
        label = subset["label"]
        swaps = study["substituted"].get(label) or {}
        shown = ", ".join(f"{k} <- {v}" for k, v in swaps.items()) or "—"
        body.append([f"`{label}`", *[fmt(means[label][n]["mean"]) for n in names], shown])
    partial = [s["label"] for s in study["subsets"] if len(s["present"]) < 4]
    body.append(
        [f"*mean of the {len(partial)} incomplete subsets*"]
        + [fmt(np.mean([means[p][n]["mean"] for p in partial])) for n in names]
        + [""]
    )
    img = missing_study.heatmap(study, doc.parent / "images" / "results_missing_subsets.png")
    all_four = all_four_rows(study)
    verdict = "within" if all_four[-1][-1] == "yes" else "**not** within"
    return (
        "One model for any subset of the four sequences (issue 21): the two-stage CPU cascade "
        f"trained with sequence dropout (`two_stage_missing_cpu`: {_dropout_words(study)}), "
        "with availability channels (`dropout-mask`) or zero-filled alone "
        "(`dropout-zero`), against the same cascade trained without dropout (`ordinary`, "
        "`two_stage_cpu` with the dropout recipe's batch Dice), which gets the missing "
        "sequences as zeros (`ordinary + zero`, "
        "`predict --substitute-missing zero`) or as the nearest present sibling (`ordinary + "
        "sibling`). Same steps, seed and training cases for the three runs (the budget is the "
        "steps; minutes are wall clock, as busy as the machine was):\n\n"
        + runs_table(study)
        + f"\nMean Dice (WT, TC, ET averaged) on the {study['test_cases']} held-out cases, "
        f"final weights, {tta}, no post-processing; each case preprocessed once, the missing "
        "sequences left out of the network input by the predictor (as `predict --missing`); "
        "`--` marks a missing sequence:\n\n"
        + md_table(["sequences present", *names, "sibling substitutes"], body, align="lrrrrl")
        + f"\n![Mean Dice per subset, configuration and region](images/{img.name})\n"
        + "\n**All four sequences present: does sequence dropout cost accuracy?** "
        f"`dropout-mask` minus the ordinary model; the issue allows a loss of at most "
        f"{ALL_FOUR_BOUND}:\n\n"
        + md_table(
            ["region", "dropout-mask", "ordinary", "difference", f"loses <= {ALL_FOUR_BOUND}"],
            all_four,
            align="lrrrl",
        )
        + f"\nThe mean Dice difference is {all_four[-1][3]}: {verdict} the issue's "
        f"{ALL_FOUR_BOUND}. With one run per configuration and {study['test_cases']} held-out "
        "cases, differences of a few hundredths are within what another seed could give: "
        "`two_stage_missing_cpu.yaml` lists the comparison over three seeds on the CPU, with its "
        "commands, and [results-missing-seeds.md](results-missing-seeds.md) over twenty more "
        "(ten on a GPU, ten on the CPU).\n"
        + f"\nRun {env.get('date_utc', '')} on {env.get('cpu', '')} ({env.get('logical_cpus')} "
        f"logical CPUs, {env.get('torch_threads')} torch thread(s)), code at commit "
        f"{env.get('git_commit', '?')}{' (with changes)' if env.get('git_dirty') else ''}: the "
        "recipes as they were then. "
        + f"Command (per-case values in `{_relative(study['settings']['out'])}/missing_study/"
        "study.json`):\n\n" + code_block([study["command"]])
    )


def write_page(study: dict[str, Any], doc: Path) -> Path:
    """Write the page (and its heat map into ``images/`` beside it); its path."""
    note = (
        "<!-- Generated by `python experiments/missing_study.py` (or `missing_page.py` from its "
        "study.json); edit the scripts, not this page. -->\n"
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join([TITLE, note, body(study, doc)]))
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path, help="missing_study.py's study.json")
    parser.add_argument("--doc", type=Path, default=common.REPO / "docs" / "results-missing.md")
    args = parser.parse_args(argv)
    print(f"wrote {write_page(dict(common.read_json(args.study)), args.doc)}")


if __name__ == "__main__":
    common.main_guard(main)
