"""Tumour cores without enhancing tumour: why the CPU cascade missed them, and the fix measured.

Cases without enhancing tumour (lower-grade-glioma-like) have a tumour core that is
non-enhancing tumour alone: it looks like neither the necrosis of enhancing tumours nor edema.
The generator makes such a case with probability 0.15 (``SynthConfig.p_no_et``), so a training
split of 25 cases holds a handful, or one. This study trains the CPU cascade (``two_stage_cpu``)
twice with the same steps, seed and cases, drawing the crops' cases

* ``uniform``: every case equally often (``data.case_balance=0``, both papers), and
* ``balanced``: weighted by kind of tumour (enhancing, non-enhancing, none) with the CPU
  recipe's ``data.case_balance`` (:mod:`cascadeseg.data.case_balance`),

and scores both, predicted as ``cascadeseg predict`` does by default (8-flip TTA, the recipe's
post-processing), on three held-out sets:

* ``test``: the studies' held-out cases (the generator's defaults, about 15% without ET);
* ``no_et``: cases without enhancing tumour only (``cascadeseg synth --no-et-prob 1``);
* ``other``: cases of another generator setting: the former, twice stronger bias field
  (``--bias-strength 0.04 0.2``), half of them multi-focal, half without ET.

It also records what could cause the misses: the compositions and core volumes of the training
cases, and, for the uniform model on the ``no_et`` set, the tumour-core probability inside the
reference core (a probability far below the threshold rules the threshold out; the ET-to-necrosis
post-processing only moves voxels into the core).

Usage::

    python experiments/no_et_study.py [--steps-3d 600] [--train-cases 32] [--extra-cases 12]

Writes ``<out>/no_et/no_et_study/study.json`` and the page ``docs/results-no-et.md``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import common
import no_et_page
import numpy as np

#: The two runs: (key, data.case_balance); ``balanced`` takes the CPU recipe's value.
RUNS: tuple[tuple[str, float | None], ...] = (("uniform", 0.0), ("balanced", None))
#: Extra held-out sets: (key, seed offset from the training seed, synth options).
EXTRA_SETS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("no_et", 200_000, ("--no-et-prob", "1")),
    (
        "other",
        300_000,
        ("--bias-strength", "0.04", "0.2", "--multifocal-prob", "0.5", "--no-et-prob", "0.5"),
    ),
)


def make_extra_sets(settings: common.Settings, n_cases: int) -> dict[str, Path]:
    """Write (or reuse) the extra held-out sets; ``{key: folder}`` with ``test`` first."""
    folders = {"test": settings.test_dir}
    for key, offset, options in EXTRA_SETS:
        folder = settings.out / "data" / key
        marker = folder / ".synth.json"
        wanted = {"cases": n_cases, "seed": settings.data_seed + offset, "options": list(options)}
        if not (marker.is_file() and common.read_json(marker) == wanted):
            argv: list[Any] = ["synth", folder, "--cases", n_cases, "--seed", wanted["seed"]]
            argv += ["--layout", common.TEST_LAYOUT, "--scale", settings.scale, "--overwrite"]
            argv += ["--workers", settings.workers, *options]
            if not settings.progress:
                argv.append("--no-progress")
            common.cascadeseg(argv, settings)
            common.write_json(marker, wanted)
        folders[key] = folder
    return folders


def score(
    settings: common.Settings, run: common.Run, tag: str, data: Path, probabilities: bool
) -> dict[str, Any]:
    """Predict ``data`` with ``run`` as ``predict`` does by default, evaluate; per-case rows."""
    pred = settings.out / "pred" / f"{run.name}-{tag}"
    ev = settings.out / "eval" / f"{run.name}-{tag}"
    argv: list[Any] = ["predict", "--model", run.last, "--input", data, "--output", pred]
    argv += ["--device", "cpu", "--overwrite"] + (["--save-probabilities"] if probabilities else [])
    if not settings.progress:
        argv.append("--no-progress")
    common.cascadeseg(argv, settings)
    eval_argv: list[Any] = ["evaluate", "--pred", pred, "--ref", data, "--out", ev]
    eval_argv += ["--no-report", "--lesion-rules", "none", "--workers", settings.workers]
    common.cascadeseg(eval_argv, settings)
    with open(ev / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = ("dice_wt", "dice_tc", "dice_et", "vol_tc_ref_ml", "vol_tc_pred_ml", "vol_et_ref_ml")
    cases = [{"case": r["case"], **{k: float(r[k]) for k in keys}} for r in rows]
    return {
        "predict_command": common.command_line([str(a) for a in argv]),
        "cases": cases,
        "mean": {k: float(np.nanmean([c[k] for c in cases])) for k in keys[:3]},
        "pred_dir": str(pred),
    }


def core_probabilities(pred_dir: Path, data: Path) -> list[dict[str, Any]]:
    """Per case: the predicted tumour-core probability inside the reference core
    (10th, 50th, 90th percentile)."""
    from cascadeseg.data.layouts import discover_cases, read_case
    from cascadeseg.data.nifti import load_nifti

    rows = []
    for ref in discover_cases(data):
        case = read_case(ref)
        probs = load_nifti(pred_dir / f"{ref.case_id}_probabilities.nii.gz")[0]
        core = np.isin(case.label, (1, 3))  # internal labels: necrosis/non-enhancing, ET
        tc = np.asarray(probs)[..., 1][core]
        q = np.percentile(tc, [10, 50, 90]).tolist() if tc.size else [float("nan")] * 3
        rows.append({"case": ref.case_id, "core_voxels": int(core.sum()), "p10_50_90": q})
    return rows


def training_compositions(settings: common.Settings, run: common.Run) -> list[dict[str, Any]]:
    """The composition and tumour-core volume (mL) of each training case of ``run``'s split."""
    from cascadeseg.data.case_balance import composition
    from cascadeseg.data.layouts import discover_cases, read_case

    split = common.read_json(run.run_dir / "split.json")
    refs = {r.case_id: r for r in discover_cases(settings.train_dir)}
    rows = []
    for cid in split["train"]:
        case = read_case(refs[cid])
        voxel_ml = float(np.prod(case.meta.spacing)) / 1000.0
        core = int(np.isin(case.label, (1, 3)).sum())
        comp = composition(case.label)
        rows.append({"case": cid, "composition": list(comp), "core_ml": core * voxel_ml})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_settings_arguments(parser)
    parser.add_argument("--extra-cases", type=int, default=12, help="cases per extra set")
    parser.add_argument(
        "--doc", type=Path, default=common.REPO / "docs" / "results-no-et.md", help="page"
    )
    parser.set_defaults(train_cases=32, test_cases=8)
    args = parser.parse_args(argv)
    base = common.settings_from_args(args)
    settings = dataclasses.replace(base, out=base.out / "no_et")
    env = common.environment()
    common.banner("no-ET study: data")
    common.prepare_data(settings)
    sets = make_extra_sets(settings, args.extra_cases)
    runs: dict[str, common.Run] = {}
    scores: dict[str, dict[str, Any]] = {}
    from cascadeseg.config import load_config

    recipe_balance = load_config("two_stage_cpu").data.case_balance
    balances = {key: recipe_balance if b is None else b for key, b in RUNS}
    for key, balance in balances.items():
        common.banner(f"no-ET study: training {key} ({settings.budget_text()})")
        runs[key] = common.train_run(
            settings, key, "two_stage_cpu", [f"data.case_balance={balance:g}"]
        )
        for tag, folder in sets.items():
            common.banner(f"no-ET study: {key} on {tag}")
            probs = key == "uniform" and tag == "no_et"
            scores[f"{key}/{tag}"] = score(settings, runs[key], tag, folder, probs)
    pred = Path(scores["uniform/no_et"]["pred_dir"])
    study = {
        "study": "no_et",
        "command": "python experiments/no_et_study.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "settings": settings.as_dict(),
        "extra_sets": {k: list(o) for k, _, o in EXTRA_SETS},
        "extra_cases": args.extra_cases,
        "environment": env,
        "runs": {k: {**r.as_dict(), "case_balance": balances[k]} for k, r in runs.items()},
        "scores": scores,
        "training_cases": training_compositions(settings, runs["uniform"]),
        "core_probabilities": core_probabilities(pred, sets["no_et"]),
    }
    path = common.write_json(settings.out / "no_et_study" / "study.json", study)
    print(f"\nwrote {path}")
    print(f"wrote {no_et_page.write_page(study, args.doc)}")


if __name__ == "__main__":
    common.main_guard(main)
