"""The page ``docs/results-no-et.md`` from ``no_et_study.py``'s ``study.json`` (every figure
comes from the JSON)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

SET_NAMES = {
    "test": "the studies' held-out cases (generator defaults)",
    "no_et": "cases without enhancing tumour (`--no-et-prob 1`)",
    "other": "another generator setting (bias 0.04-0.2, half multi-focal, half without ET)",
}
REGIONS = ("dice_wt", "dice_tc", "dice_et")


def _f(value: float, sign: bool = False) -> str:
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def _no_et_mean(score: dict[str, Any]) -> tuple[int, float]:
    """(cases without ET in the reference, their mean TC Dice)."""
    tcs = [c["dice_tc"] for c in score["cases"] if c["vol_et_ref_ml"] == 0]
    return len(tcs), (statistics.fmean(tcs) if tcs else float("nan"))


def results_table(study: dict[str, Any]) -> str:
    head = "| held-out set | cases | uniform WT / TC / ET | balanced WT / TC / ET | TC change "
    head += "| cases without ET: TC uniform -> balanced |\n|---|---|---|---|---|---|\n"
    rows = []
    for tag, name in SET_NAMES.items():
        u, b = study["scores"][f"uniform/{tag}"], study["scores"][f"balanced/{tag}"]
        (n, tu), (_, tb) = _no_et_mean(u), _no_et_mean(b)
        cells = [" / ".join(_f(s["mean"][r]) for r in REGIONS) for s in (u, b)]
        change = _f(b["mean"]["dice_tc"] - u["mean"]["dice_tc"], sign=True)
        no_et = f"{n}: {_f(tu)} -> {_f(tb)}" if n else "none"
        cells += [change, no_et]
        rows.append(f"| {name} | {len(u['cases'])} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def balance_power(study: dict[str, Any]) -> float:
    """The balanced run's ``data.case_balance``."""
    return float(study["runs"]["balanced"]["case_balance"])


def balanced_share(n_rare: int, n_other: int, power: float) -> float:
    """Share of the crops that the ``n_rare`` cases of one kind get beside ``n_other`` cases of
    the other kind, with weights ``1 / n ** power`` (:mod:`cascadeseg.data.case_balance`)."""
    if n_rare == 0:
        return 0.0
    rare, other = n_rare ** (1 - power), (n_other ** (1 - power) if n_other else 0.0)
    return rare / (rare + other)


def cause_text(study: dict[str, Any]) -> str:
    train = study["training_cases"]
    no_et = [c for c in train if 3 not in c["composition"]]
    with_et = [c for c in train if 3 in c["composition"]]
    med = lambda rows: statistics.median(c["core_ml"] for c in rows) if rows else float("nan")  # noqa: E731
    probs = [p["p10_50_90"][1] for p in study["core_probabilities"]]
    comps: dict[str, int] = {}
    for c in train:
        key = "+".join(map(str, c["composition"])) or "none"
        comps[key] = comps.get(key, 0) + 1
    listing = ", ".join(f"{k}: {v}" for k, v in sorted(comps.items(), key=lambda kv: -kv[1]))
    power = balance_power(study)
    split = (
        f"The runs' training split holds {len(train)} cases, {len(no_et)} without enhancing "
        f"tumour (label sets, internal labels 1 necrosis/non-enhancing, 2 edema, 3 ET: "
        f"{listing}). "
    )
    if not no_et:
        split += (
            "**None without enhancing tumour**: neither model saw such a core, and the balance "
            "has no kind to lift (every training case is of one kind, so `balanced` draws "
            "uniformly at random instead of in turn: another sample of the same crops). "
        )
    else:
        share = balanced_share(len(no_et), len(with_et), power)
        size = "smaller than" if med(no_et) < 0.5 * med(with_et) else "about as large as"
        split += (
            f"Their cores are {size} those with ET (median {med(no_et):.1f} mL against "
            f"{med(with_et):.1f} mL); drawn uniformly they are in about "
            f"{len(no_et) / max(len(train), 1):.0%} of the crops; `balanced` "
            f"(`data.case_balance={power:g}`) gives them about {share:.0%}. "
        )
    return (
        "**Why the cores are missed.** "
        + split
        + "Their tissue looks like neither the necrosis of enhancing tumours (dark on T1, bright "
        "on T2) nor edema, from which it differs by 5-15% per sequence. The uniform model's "
        "tumour-core probability inside the reference cores of the cases without ET has a "
        f"median of {statistics.median(probs):.3f} (per-case medians {min(probs):.3f} to "
        f"{max(probs):.3f}): far below the 0.5 threshold, so no threshold recovers them; the "
        "ET-to-necrosis post-processing only moves voxels into the core, and the crops centred "
        "on tumour (half of them) already hold the whole core of such a case (96 mm crops). "
        "What is missing is exposure to such cases.\n"
    )


def commands_text(study: dict[str, Any]) -> str:
    lines = [study["command"]] if "command" in study else []  # the whole study (newer runs)
    lines += [r["command"] for r in study["runs"].values()]
    lines += [s["predict_command"] for s in study["scores"].values()][:3]
    return "```bash\n" + "\n".join(lines) + "\n```\n"


def per_case_table(study: dict[str, Any]) -> str:
    u, b = study["scores"]["uniform/no_et"]["cases"], study["scores"]["balanced/no_et"]["cases"]
    probs = {p["case"]: p["p10_50_90"][1] for p in study["core_probabilities"]}
    rows = [
        f"| {cu['case']} | {cu['vol_tc_ref_ml']:.1f} | {_f(cu['dice_tc'])} | {_f(cb['dice_tc'])} "
        f"| {probs.get(cu['case'], float('nan')):.3f} |"
        for cu, cb in zip(u, b, strict=True)
    ]
    head = "| case | core mL | TC uniform | TC balanced | uniform: median TC probability in core |"
    return head + "\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n"


def write_page(study: dict[str, Any], doc: Path) -> Path:
    st, runs = study["settings"], study["runs"]
    steps = {k: r.get("steps") for k, r in runs.items()}
    env = study["environment"]
    text = [
        "# Tumour cores without enhancing tumour\n",
        "<!-- Generated by `python experiments/no_et_study.py`; edit the script, not this "
        "page. -->\n",
        "The CPU cascade (`two_stage_cpu`) trained twice on the same "
        f"{st['train_cases']} synthetic cases (data seed {st.get('data_seed', '?')}; held-out "
        f"cases seed {st.get('test_seed', '?')}; 5-fold split, fold 0), seed {st['seed']}, "
        f"{steps['uniform']} and {steps['balanced']} optimiser steps of 2 crops: `uniform` draws "
        "the crops' cases uniformly (both papers), `balanced` weights them by kind of tumour "
        f"(`data.case_balance={balance_power(study):g}`, the CPU recipe's value when the study "
        "ran: enhancing, non-enhancing, none). Predicted as `cascadeseg "
        "predict` does by default (8-flip TTA, the recipe's post-processing); mean Dice per "
        f"set. Machine: {env.get('cpu') or 'see study.json'}, {env.get('torch_threads')} threads; "
        f"{env.get('date_utc', '')}.\n",
        results_table(study),
        "\n" + cause_text(study),
        "\nCommands (training, then prediction of each set; the sets' synth options are in "
        "`study.json`):\n",
        commands_text(study),
        "\n## Per case: the cases without enhancing tumour\n",
        per_case_table(study),
    ]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(text))
    return doc
