"""The studies' pure parts (experiments/): step budgets, row order, tables from a fake study.json.

Nothing here trains or predicts: the studies themselves run with ``experiments/run_all.sh``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import common  # noqa: E402
import cunet_study  # noqa: E402
import missing_page  # noqa: E402
import missing_study  # noqa: E402
import tc_threshold_sweep  # noqa: E402
import two_stage_study  # noqa: E402
import write_results  # noqa: E402

# --------------------------------------------------------------------------------------------
# budgets


@pytest.mark.parametrize(
    ("steps", "per_epoch", "min_epochs", "expected"),
    [
        (300, 25, 1, (12, 25)),  # the recipe's epoch length kept
        (600, 60, 1, (10, 60)),
        (600, 60, 24, (24, 25)),  # 8 snapshots: at least 24 epochs
        (4, 60, 24, (4, 1)),  # fewer steps than epochs wanted: one step an epoch
        (4, 25, 1, (1, 4)),
        (7, 25, 1, (1, 7)),  # a prime: one epoch
        (10, None, 1, (1, 10)),  # one pass over the data: one epoch
    ],
)
def test_split_steps(steps: int, per_epoch: int | None, min_epochs: int, expected: Any) -> None:
    epochs, iters = common.split_steps(steps, per_epoch, min_epochs)
    assert (epochs, iters) == expected
    assert epochs * iters == steps


def test_split_steps_is_exact_for_every_budget() -> None:
    for steps in range(1, 200):
        for per_epoch in (1, 7, 25, 60):
            epochs, iters = common.split_steps(steps, per_epoch, 3)
            assert epochs * iters == steps
            assert epochs >= min(3, steps)


def test_split_steps_rejects_no_steps() -> None:
    with pytest.raises(ValueError):
        common.split_steps(0, 25)


def test_step_budget_overrides() -> None:
    budget = common.step_budget(300, 2, 25)
    assert (budget.steps, budget.batch_size, budget.samples) == (300, 8, 2400)
    assert budget.overrides() == [
        "train.epochs=12",
        "train.iters_per_epoch=25",
        "train.batch_size=8",
        "train.max_minutes=null",
        "train.time_schedule=false",
        "train.early_stop_patience=0",
        "train.val_every=6",  # twice: half-way and at the end
    ]
    snapshots = common.step_budget(600, 3, 60, snapshots=8)
    assert (snapshots.epochs, snapshots.iters_per_epoch, snapshots.batch_size) == (24, 25, 2)
    assert common.step_budget(600, 3, 60, val_every=0).val_every == 0  # never, as the recipe
    assert common.step_budget(5, 2, 25).val_every == 1  # one epoch: validated at its end
    with pytest.raises(ValueError):
        common.step_budget(10, 4, 10)


def test_every_2d_model_gets_the_same_steps_and_samples() -> None:
    """The shipped recipes of the CU-Net study under one step budget: equal steps x batch."""
    from cascadeseg.config import apply_overrides, load_config

    settings = common.Settings(steps=120, steps_3d=90)
    figures = {}
    for key, (_, recipe, overrides) in common.RUNS.items():
        cfg = load_config(recipe, overrides)
        dims = common.recipe_dims(cfg)
        plan = common.step_budget(
            settings.steps_for(dims),
            dims,
            cfg.train.iters_per_epoch,
            cfg.train.snapshots,
            cfg.train.val_every,
        )
        final = apply_overrides(cfg, plan.overrides())
        assert final.train.epochs * final.train.iters_per_epoch == settings.steps_for(dims)
        assert final.train.max_minutes is None
        assert final.train.early_stop_patience == 0
        figures[key] = (dims, final.train.epochs * final.train.iters_per_epoch, plan.samples)
    two_d = {v for v in figures.values() if v[0] == 2}
    three_d = {v for v in figures.values() if v[0] == 3}
    assert two_d == {(2, 120, 960)}
    assert three_d == {(3, 90, 180)}


def test_settings_modes() -> None:
    steps = common.Settings(steps=300, steps_3d=600)
    assert steps.budget_mode == "steps"
    assert (steps.steps_for(2), steps.steps_for(3)) == (300, 600)
    wall = common.Settings(steps=0, minutes=4)
    assert wall.budget_mode == "minutes"
    assert wall.steps_for(2) == 0
    assert "4 min" in wall.budget_text()
    d = steps.as_dict()
    assert d["budget_mode"] == "steps"
    assert d["step_batch"] == {"2d": 8, "3d": 2}


def test_settings_from_the_command_line() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    common.add_settings_arguments(parser)
    s = common.settings_from_args(parser.parse_args([]))
    assert (s.steps, s.steps_3d) == (common.DEFAULT_STEPS_2D, common.DEFAULT_STEPS_3D)
    s = common.settings_from_args(parser.parse_args(["--steps", "0", "--minutes", "2.5"]))
    assert s.budget_mode == "minutes"
    assert s.minutes == 2.5


def test_run_figures() -> None:
    run = {"summary": {"steps": 300, "minutes": 4.5}, "budget": {"batch_size": 8}}
    assert common.run_figures(run) == {"steps": 300, "samples_seen": 2400, "minutes": 4.5}
    assert common.run_figures({"summary": {}})["samples_seen"] is None


def test_prediction_timing(tmp_path: Path) -> None:
    for i, total in enumerate((2.0, 4.0)):
        record = {"settings": {"passes": 64, "seconds": {"total": total}}}
        (tmp_path / f"case_{i}.json").write_text(json.dumps(record))
    (tmp_path / "experiment.json").write_text(json.dumps({"command": "x", "wall_seconds": 9}))
    assert common.prediction_timing(tmp_path) == (64, 3.0)
    passes, seconds = common.prediction_timing(tmp_path / "missing")
    assert passes == 0 and math.isnan(seconds)


# --------------------------------------------------------------------------------------------
# rows


def test_cunet_rows_in_the_papers_order() -> None:
    names = [name for name, _, _ in cunet_study.CONDITIONS]
    assert names == [
        "U-Net (2D)",
        "BFCN",
        "DRN",
        "CUN",
        "CUN+LWS",
        "CUN+LWS, U-Net 2 sees the image",
    ]
    assert list(write_results.PAPER_CUNET_TABLE1) == ["U-Net", "BFCN", "DRN", "CUN", "CUN+LWS"]
    for _, key, _ in cunet_study.CONDITIONS:
        assert key in common.RUNS


def test_cunet_runs_unet2_image_input() -> None:
    """CUN and CUN+LWS as the paper builds them; the extra row differs in that option only."""
    from cascadeseg.config import load_config

    def args(key: str) -> tuple[bool, bool]:
        _, recipe, overrides = common.RUNS[key]
        cfg = load_config(recipe, overrides)
        return cfg.model.args["unet2_image_input"], cfg.loss.lws

    assert args("cunet_nolws") == (False, False)
    assert args("cunet_lws") == (False, True)
    assert args("cunet_lws_image") == (True, True)


def test_two_stage_rows() -> None:
    names = [name for name, _, _ in two_stage_study.CONDITIONS]
    assert names == [
        "Stage 1 alone",
        "Two-stage",
        "Two-stage + TTA",
        "Two-stage + TTA + snapshots (paired)",
        "Two-stage + TTA + snapshots (product)",
    ]
    options = {name: opts for name, _, opts in two_stage_study.CONDITIONS}
    assert options["Two-stage + TTA + snapshots (paired)"]["ensemble_mode"] == "paired"
    assert options["Two-stage + TTA + snapshots (product)"]["ensemble_mode"] == "product"
    assert sorted(two_stage_study.RUN_ORDER) == list(range(len(names)))
    assert two_stage_study.RUN_ORDER[-1] == names.index("Two-stage + TTA + snapshots (product)")
    assert "train.snapshots=8" in common.RUNS["two_stage"][2]


# --------------------------------------------------------------------------------------------
# the page, from fake study.json files

METRICS = ("dice", "sens", "spec", "hd95")


def _row(name: str, value: float) -> dict[str, Any]:
    row: dict[str, Any] = {"method": name, "n": "2"}
    for m in METRICS:
        for r in ("wt", "tc", "et"):
            row[f"{m}_{r}"] = str(value if m != "hd95" else 10 * value)
    return row


def _per_case(value: float) -> list[dict[str, Any]]:
    return [
        {"case": f"c{i}", **{f"{m}_{r}": value for m in METRICS for r in ("wt", "tc", "et")}}
        for i in range(2)
    ]


def _run(tmp: Path, key: str, steps: int, minutes: float, batch: int) -> dict[str, Any]:
    return {
        "name": key,
        "recipe": f"{key}_cpu",
        "overrides": ["data.split=kfold", f"train.epochs={steps}", "seed=0", "loss.lws=true"],
        "run_dir": str(tmp / "runs" / key),
        "command": f"cascadeseg train {key}_cpu",
        "summary": {"epochs_done": 1, "steps": steps, "minutes": minutes, "stop_reason": "epochs"},
        "parameters": 1000,
        "note": "",
        "budget": {
            "mode": "steps",
            "dims": 2,
            "steps": steps,
            "epochs": 1,
            "iters_per_epoch": steps,
            "batch_size": batch,
        },
        "snapshots": [],
    }


def _condition(name: str, run: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "run": run,
        "members": extra.pop("members", 1),
        "tta": extra.pop("tta", False),
        "et_min_voxels": 0,
        "predict_seconds": 4.0,
        "predict_command": f"cascadeseg predict {name}",
        "evaluate_command": f"cascadeseg evaluate {name}",
        **extra,
    }


def _environment(dirty: bool) -> dict[str, Any]:
    return {
        "date_utc": "2026-01-01 00:00 UTC",
        "cpu": "test CPU",
        "logical_cpus": 2,
        "torch_threads": 2,
        "gpu": None,
        "python": "3.11",
        "torch": "2",
        "cascadeseg": "0.1.0",
        "git_commit": "abc1234",
        "git_dirty": dirty,
        "git_changes": ["experiments/common.py"] if dirty else [],
    }


SETTINGS = {
    "train_cases": 5,
    "test_cases": 2,
    "data_seed": 1,
    "test_seed": 100001,
    "seed": 0,
    "steps": 6,
    "steps_3d": 8,
    "minutes": 4.0,
    "scale": 0.5,
    "train_layout": "brats2021",
    "test_layout": "brats2023",
    "overrides": [],
    "budget_mode": "steps",
    "step_batch": {"2d": 8, "3d": 2},
}


def _cunet_study(tmp: Path) -> dict[str, Any]:
    runs, conditions, rows, per_case = {}, [], [], {}
    for i, (name, key, _) in enumerate(cunet_study.CONDITIONS):
        runs[key] = _run(tmp, key, 6, 0.1 * (i + 1), 8)
        conditions.append(_condition(name, key))
        rows.append(_row(name, 0.5 + 0.05 * i))
        per_case[name] = _per_case(0.5 + 0.05 * i)
    effect = {
        m: {
            r: {"n": 2, "mean_a": 0.5, "mean_b": 0.6, "mean_diff": 0.1, "up": 2, "down": 0}
            for r in ("wt", "tc", "et")
        }
        for m in ("dice", "sens", "spec")
    }
    return {
        "study": "cunet",
        "settings": SETTINGS,
        "environment": _environment(dirty=True),
        "runs": runs,
        "conditions": conditions,
        "comparison": {"command": "cascadeseg compare", "rows": rows},
        "per_case": per_case,
        "lws_effect": effect,
        "cascade_effect": effect,
        "image_input_effect": effect,
        "image_input_row": cunet_study.IMAGE_INPUT_ROW,
        "unet_reference": "U-Net (2D)",
    }


def _two_stage_study(tmp: Path) -> dict[str, Any]:
    runs = {
        "stage1": _run(tmp, "stage1", 8, 0.2, 2),
        "two_stage": {**_run(tmp, "two_stage", 8, 0.4, 2), "snapshots": ["s1.pt", "s2.pt"]},
    }
    conditions, rows, per_case = [], [], {}
    passes = {0: 1, 1: 1, 2: 8, 3: 8, 4: 16}
    for i, (name, key, opts) in enumerate(two_stage_study.CONDITIONS):
        conditions.append(
            _condition(
                name,
                key,
                tta=bool(opts.get("tta")),
                members=2 if opts.get("snapshots") else 1,
                ensemble_mode=opts.get("ensemble_mode", ""),
                passes=passes[i],
                seconds_per_case=1.5 * passes[i],
            )
        )
        rows.append(_row(name, 0.6 + 0.01 * i))
        per_case[name] = _per_case(0.6 + 0.01 * i)
    sweep = {
        name: {
            "mean_dice": {str(c): 0.7 for c in two_stage_study.ET_CANDIDATES},
            "best": 0,
            "cases": [{"case": "c0", "pred_et_voxels": 5, "ref_et_voxels": 6, "dice": 0.7}],
        }
        for name in per_case
    }
    return {
        "study": "two_stage",
        "settings": SETTINGS,
        "environment": _environment(dirty=False),
        "runs": runs,
        "stage1_note": "",
        "conditions": conditions,
        "comparison": {"command": "cascadeseg compare", "rows": rows},
        "per_case": per_case,
        "et_candidates": list(two_stage_study.ET_CANDIDATES),
        "et_sweep": sweep,
        "et_tuning": None,
    }


def _table_lines(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


def test_cunet_table_puts_the_papers_row_under_ours(tmp_path: Path) -> None:
    table = _table_lines(write_results.cunet_table(_cunet_study(tmp_path)))
    header, body = table[0], table[2:]
    assert header[-3:] == ["n", "steps", "minutes"]
    names = [row[0] for row in body]
    assert names == [
        "U-Net (2D)",
        "*paper: U-Net*",
        "BFCN",
        "*paper: BFCN*",
        "DRN",
        "*paper: DRN*",
        "CUN",
        "*paper: CUN*",
        "CUN+LWS",
        "*paper: CUN+LWS*",
        "CUN+LWS, U-Net 2 sees the image",
    ]
    bfcn = body[names.index("*paper: BFCN*")]
    assert bfcn[1:10] == [
        f"*{v}*" for v in ("0.874", "0.857", "0.997", "0.788", "0.850", "0.998")
    ] + ["*0.757*", "*0.851*", "*0.998*"]
    assert body[0][-2:] == ["6", "0.1"]  # steps, minutes


def test_two_stage_table(tmp_path: Path) -> None:
    table = _table_lines(write_results.two_stage_table(_two_stage_study(tmp_path)))
    header, body = table[0], table[2:]
    assert header[:5] == ["Condition", "models", "TTA", "ensemble", "passes"]
    assert header[-3:] == ["s/case", "steps", "minutes"]
    names = [row[0] for row in body]
    assert names[:5] == [name for name, _, _ in two_stage_study.CONDITIONS]
    assert names[5:] == [f"*paper: {n}*" for n in write_results.PAPER_TWO_STAGE_TABLE3]
    product = body[4]
    assert product[3:5] == ["product", "16"]
    assert product[-3:] == ["24.0", "8", "0.4"]
    assert body[6][5] == "*0.908*"  # Best Single Model, WT Dice 0.90819


def test_code_text_marks_a_dirty_tree() -> None:
    assert write_results.code_text([_environment(dirty=False)]) == "commit `abc1234`, clean tree"
    dirty = write_results.code_text([_environment(dirty=True)])
    assert "`abc1234` with uncommitted changes" in dirty
    assert "experiments/common.py" in dirty
    no_git = {**_environment(False), "git_commit": "", "git_dirty": None}
    assert "unknown" in write_results.code_text([no_git])


def test_budget_text() -> None:
    text = write_results.budget_text(SETTINGS)
    assert "6 steps of 8 slices (48 training slices) per 2D model" in text
    assert "8 steps of 2 crops (16 training crops) per 3D model" in text
    wall = write_results.budget_text({**SETTINGS, "budget_mode": "minutes"})
    assert "4 min of wall-clock training" in wall


def test_run_row() -> None:
    run = _run(Path("/x"), "cunet_lws", 300, 5.0, 8)
    row = write_results.run_row(run)
    cells = dict(zip(write_results.RUN_HEADER, row))
    assert cells["overrides"] == "`data.split=kfold` `loss.lws=true`"
    assert (cells["steps"], cells["samples seen"], cells["minutes"]) == (300, "2,400", "5.00")
    assert cells["s/step"] == "1.00"


@pytest.mark.slow
def test_whole_page_from_fake_studies(tmp_path: Path) -> None:
    """The whole page (box plots included, hence slow-marked: about 10 s on 2 busy cores)."""
    out = tmp_path / "out"
    for folder, study in (
        ("cunet_study", _cunet_study(out)),
        ("two_stage_study", _two_stage_study(out)),
    ):
        common.write_json(out / folder / "study.json", study)
    doc = write_results.write_results(out, tmp_path / "docs" / "results.md")
    page = doc.read_text()
    for name, _, _ in cunet_study.CONDITIONS + two_stage_study.CONDITIONS:
        assert f"| {name} |" in page
    assert "*paper: DRN*" in page
    assert "*paper: Ensemble of 12 Models*" in page
    assert "commit `abc1234` with uncommitted changes" in page
    assert "| samples seen |" in page
    assert "U-Net 2 sees the image" in page
    assert "Same number of steps" in page
    assert "side_by_side" in page  # reported as not done


@pytest.mark.slow
def test_page_from_studies_written_before_the_step_mode(tmp_path: Path) -> None:
    """study.json files of the wall-clock studies (no budget, passes or image-input records)
    still render."""
    out = tmp_path / "out"
    cunet = _cunet_study(out)
    two_stage = _two_stage_study(out)
    for study in (cunet, two_stage):
        study["settings"] = {
            k: v for k, v in SETTINGS.items() if k not in ("budget_mode", "step_batch")
        }
        for run in study["runs"].values():
            del run["budget"]
            run["overrides"].append("train.max_minutes=4")
        for cond in study["conditions"]:
            for key in ("passes", "seconds_per_case", "ensemble_mode"):
                cond.pop(key, None)
    del cunet["image_input_effect"], cunet["image_input_row"]
    common.write_json(out / "cunet_study" / "study.json", cunet)
    common.write_json(out / "two_stage_study" / "study.json", two_stage)
    page = write_results.write_results(out, tmp_path / "results.md").read_text()
    assert "4 min of wall-clock training per model" in page
    assert "| 4 min |" in page  # the run table's budget, from the overrides
    assert "Same wall-clock budget" in page


def test_the_studies_run_on_the_generators_current_data() -> None:
    from cascadeseg.data.synth import SynthConfig

    assert common.GENERATOR_BIAS_STRENGTH == tuple(SynthConfig().bias_strength)
    assert common.Settings().bias_strength == common.GENERATOR_BIAS_STRENGTH


# --------------------------------------------------------------------------------------------
# the missing-sequence study


def test_missing_study_subsets_and_labels() -> None:
    subsets = missing_study.subsets()
    assert len(subsets) == 15 and len(set(subsets)) == 15
    assert subsets[0] == ("flair", "t1", "t1ce", "t2")
    assert [len(s) for s in subsets] == [4] * 1 + [3] * 4 + [2] * 6 + [1] * 4
    assert missing_study.subset_label(("flair", "t1", "t2")) == "FLAIR T1 -- T2"
    assert missing_study.subset_label(("t1ce",)) == "-- -- T1ce --"
    assert missing_study.subset_label(("flair", "t1", "t2"), aligned=True) == "FLAIR T1 --   T2"
    swaps = missing_study.substitutions()
    assert swaps["FLAIR T1 T1ce T2"] == {}
    assert swaps["FLAIR T1 -- T2"] == {"t1ce": "t1"}
    assert swaps["-- -- -- T2"] == {"flair": "t2", "t1": "t2", "t1ce": "t2"}


def test_missing_study_runs_get_the_same_budget() -> None:
    """The three runs differ only in sequence dropout and its fill, and make the same steps."""
    from cascadeseg.config import apply_overrides, load_config

    plans, configs = set(), {}
    for key, (recipe, overrides) in missing_study.RUNS.items():
        cfg = load_config(recipe, overrides)
        plan = common.step_budget(600, 3, cfg.train.iters_per_epoch, cfg.train.snapshots)
        plans.add(tuple(plan.overrides()))
        configs[key] = apply_overrides(cfg, plan.overrides())
    assert len(plans) == 1
    dropout = {
        k: (c.data.sequence_dropout, c.data.sequence_dropout_end, c.data.missing_fill)
        for k, c in configs.items()
    }
    assert dropout == {
        "ordinary": (0.0, 1.0, "mask"),
        "dropout_mask": (0.25, 0.5, "mask"),
        "dropout_zero": (0.25, 0.5, "zero"),
    }
    from cascadeseg.config import to_dict

    def rest(cfg: Any) -> dict[str, Any]:
        d = to_dict(cfg)
        for key in (
            "sequence_dropout",
            "sequence_dropout_max",
            "sequence_dropout_end",
            "missing_fill",
        ):
            d["data"].pop(key)
        return d

    assert (
        rest(configs["ordinary"]) == rest(configs["dropout_mask"]) == rest(configs["dropout_zero"])
    )
    assert [c[0] for c in missing_study.CONFIGS] == [
        "dropout-mask",
        "dropout-zero",
        "ordinary + zero",
        "ordinary + sibling",
    ]


def test_missing_study_quick_defaults_and_explicit_options() -> None:
    quick = missing_study.parse_args(["--quick"])
    assert (quick.train_cases, quick.test_cases, quick.steps_3d, quick.scale) == (5, 2, 4, 0.25)
    assert quick.out == missing_study.QUICK["out"] and not quick.tta
    mine = missing_study.parse_args(["--quick", "--steps-3d", "6", "--tta", "--reuse"])
    assert (mine.steps_3d, mine.tta, mine.reuse) == (6, True, True)
    plain = missing_study.parse_args([])
    assert (plain.train_cases, plain.steps_3d) == (16, common.DEFAULT_STEPS_3D)


def _missing_study(tmp: Path) -> dict[str, Any]:
    """A fake study.json of the missing study: Dice 0.8 with all four, lower with fewer."""
    names = [c[0] for c in missing_study.CONFIGS]
    subsets = [
        {"label": missing_study.subset_label(p), "present": list(p)}
        for p in missing_study.subsets()
    ]
    mean: dict[str, Any] = {}
    for s in subsets:
        value = 0.2 * len(s["present"])
        mean[s["label"]] = {
            n: {"wt": value, "tc": value - 0.1, "et": value - 0.2, "mean": value - 0.1}
            for n in names
        }
    # With all four: dropout-mask 0.005 below the ordinary model.
    full = mean[subsets[0]["label"]]
    full["dropout-mask"] = {k: v - 0.005 for k, v in full["dropout-mask"].items()}
    runs = {
        key: {**_run(tmp, f"missing_{key}", 8, 0.5, 2), "recipe": recipe}
        for key, (recipe, _) in missing_study.RUNS.items()
    }
    return {
        "study": "missing",
        "command": "python experiments/missing_study.py --steps-3d 8",
        "settings": {**SETTINGS, "out": str(tmp)},
        "environment": _environment(dirty=False),
        "tta": False,
        "test_cases": 2,
        "runs": runs,
        "configs": [{"name": c, "run": k, "substitute": s} for c, k, s in missing_study.CONFIGS],
        "subsets": subsets,
        "substituted": missing_study.substitutions(),
        "mean_dice": mean,
        "per_case": {},
        "seconds_per_prediction": {n: 1.0 for n in names},
    }


def test_missing_study_means() -> None:
    cases = [
        {"case": "c0", "dice_wt": 1.0, "dice_tc": 0.5, "dice_et": 0.0},
        {"case": "c1", "dice_wt": 0.0, "dice_tc": 0.5, "dice_et": 1.0},
    ]
    per_case = {"A": {"x": cases}}
    assert missing_study.mean_dice(per_case) == {
        "A": {"x": {"wt": 0.5, "tc": 0.5, "et": 0.5, "mean": 0.5}}
    }


def test_missing_all_four_comparison(tmp_path: Path) -> None:
    rows = missing_page.all_four_rows(_missing_study(tmp_path))
    assert [r[0] for r in rows] == ["WT", "TC", "ET", "mean"]
    assert rows[0][1:] == ["0.795", "0.800", "-0.005", "yes"]
    study = _missing_study(tmp_path)
    full = study["mean_dice"]["FLAIR T1 T1ce T2"]
    full["dropout-mask"]["mean"] = full["ordinary + zero"]["mean"] - 0.02
    assert missing_page.all_four_rows(study)[-1][-1] == "no"


@pytest.mark.slow
def test_missing_section_and_heat_map(tmp_path: Path) -> None:
    """The page from a fake study (the heat map included, hence slow-marked), and
    docs/results.md's section made of it."""
    study = _missing_study(tmp_path)
    doc = tmp_path / "docs" / "results-missing.md"
    text = missing_page.write_page(study, doc).read_text()
    assert (tmp_path / "docs" / "images" / "results_missing_subsets.png").is_file()
    table = _table_lines(text.split("![", 1)[0].split("marks a missing sequence:", 1)[1])
    header, body = table[0], table[2:]
    assert header == ["sequences present", *[c[0] for c in missing_study.CONFIGS],
                      "sibling substitutes"]  # fmt: skip
    assert len(body) == 16 and body[0][0] == "`FLAIR T1 T1ce T2`"
    assert body[2] == ["`FLAIR T1 -- T2`", "0.500", "0.500", "0.500", "0.500", "t1ce <- t1"]
    assert body[-1][0] == "*mean of the 14 incomplete subsets*"
    assert "-0.005: within the issue's 0.01" in text
    assert "python experiments/missing_study.py --steps-3d 8" in text
    section = write_results.section_page(doc, doc.name, "7. Missing sequences")
    assert section.startswith("\n## 7. Missing sequences\n") and "-0.005: within" in section
    assert write_results.section_page(doc, "results-absent.md", "8. Absent") == ""


def test_train_run_reuses_a_finished_run_when_asked(tmp_path: Path) -> None:
    """``--reuse``: a finished run trained by another command is kept, not trained again."""
    sys.path.insert(0, str(EXPERIMENTS.parent / "tests" / "inference"))
    from tiny_members import tiny_checkpoint

    settings = common.Settings(out=tmp_path, steps_3d=8)
    run_dir = tmp_path / "runs" / "missing_ordinary"
    tiny_checkpoint(run_dir / "checkpoints" / "last.pt")
    common.write_json(run_dir / "summary.json", {"steps": 4, "minutes": 0.1})
    common.write_json(run_dir / "experiment.json", {"command": "cascadeseg train other"})
    run = common.train_run(settings, "missing_ordinary", "two_stage_cpu", reuse_finished=True)
    assert run.command == "cascadeseg train other"
    assert run.summary == {"steps": 4, "minutes": 0.1} and run.parameters > 0
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_train_run_trains_again_when_the_recipe_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run is reused only when its command *and* its resolved recipe are this one's: a
    shipped recipe edited since then trains it again under the same command line."""
    sys.path.insert(0, str(EXPERIMENTS.parent / "tests" / "inference"))
    from tiny_members import tiny_checkpoint

    trained: list[list[str]] = []

    def fake_train(argv: Any, settings: Any) -> float:
        trained.append([str(a) for a in argv])
        run_dir = tmp_path / "runs" / "missing_ordinary"
        tiny_checkpoint(run_dir / "checkpoints" / "last.pt")
        common.write_json(run_dir / "summary.json", {"steps": 8, "minutes": 0.1})
        return 1.0

    monkeypatch.setattr(common, "cascadeseg", fake_train)
    settings = common.Settings(out=tmp_path, steps_3d=8)
    first = common.train_run(settings, "missing_ordinary", "two_stage_cpu")
    record = tmp_path / "runs" / "missing_ordinary" / "experiment.json"
    assert len(trained) == 1 and common.read_json(record)["config"]["model"]["name"] == "two_stage"
    assert common.train_run(settings, "missing_ordinary", "two_stage_cpu").command == first.command
    assert len(trained) == 1  # same command, same recipe: reused
    stale = common.read_json(record)
    stale["config"]["data"]["case_balance"] = 0.0  # the recipe as it was before an edit
    common.write_json(record, stale)
    common.train_run(settings, "missing_ordinary", "two_stage_cpu")
    assert len(trained) == 2  # same command line, another recipe: trained again


def test_missing_page_words_the_dropout_window(tmp_path: Path) -> None:
    study = _missing_study(tmp_path)
    assert missing_page._dropout_words(study) == "half the crops lose 1 to 3 sequences"
    window = {"prob": 0.5, "max_dropped": 3, "start": 0.0, "end": 0.7, "fill": "mask"}
    study["runs"]["dropout_mask"]["dropout"] = window
    assert missing_page._dropout_words(study) == (
        "over the first 70% of the run half the crops lose 1 to 3 sequences, the other steps "
        "train on complete crops"
    )
    study["runs"]["dropout_mask"]["dropout"] = {**window, "prob": 0.25, "start": 0.5, "end": 1.0}
    assert missing_page._dropout_words(study).startswith("from 50% to 100% of the run 25% of the")


# --------------------------------------------------------------------------------------------
# the tumour core's threshold in cases without enhancing tumour


def test_tc_sweep_lowers_the_core_only_without_et_or_everywhere() -> None:
    import numpy as np

    # Two voxels: an under-confident core, and ET inside a confident core (first case) or not
    # (second case: ET 0.1 everywhere).
    with_et = np.array([[0.9, 0.9], [0.35, 0.8], [0.1, 0.9]])
    without_et = np.array([[0.9, 0.9], [0.35, 0.8], [0.1, 0.1]])
    sweep = tc_threshold_sweep.label_at
    assert sweep(with_et, 0.5, 0.3, "without_et").tolist() == [2, 3]  # unchanged: has ET
    assert sweep(with_et, 0.5, 0.3, "every").tolist() == [1, 3]
    assert sweep(without_et, 0.5, 0.3, "without_et").tolist() == [1, 1]
    assert sweep(without_et, 0.5, 0.5, "without_et").tolist() == [2, 1]


def test_tc_sweep_summary_averages_cases_then_runs() -> None:
    def row(model: str, tc: float) -> dict[str, Any]:
        values = {f"{v}@{t:g}": [1.0, tc, 1.0] for v in tc_threshold_sweep.VARIANTS for t in (0.5,)}
        return {"model": model, "set": "no_et", **values}

    # run a: cases 0.2 and 0.4 (mean 0.3); run b: one case 0.9 -> mean of runs 0.6
    rows = [row("a", 0.2), row("a", 0.4), row("b", 0.9)]
    assert tc_threshold_sweep.summary(rows, [0.5]) == [
        "no_et (without_et, 2 runs) TC 0.5: 0.600",
        "no_et (every, 2 runs) TC 0.5: 0.600",
    ]


def test_results_md_embeds_each_page_as_it_is() -> None:
    """docs/results.md holds every page of EXTRA_PAGES as write_results.py would embed it, so a
    page edited by hand and the section it makes do not drift apart."""
    doc = EXPERIMENTS.parent / "docs" / "results.md"
    text = doc.read_text()
    first = write_results.EXTRA_PAGES[0][1]  # its number: the sections before it are studies'
    number = int(text.split(f". {first}\n", 1)[0].rsplit("\n## ", 1)[1])
    for name, heading in write_results.EXTRA_PAGES:
        section = write_results.section_page(doc, name, f"{number}. {heading}")
        assert section, f"docs/{name} is missing"
        assert section.strip() in text, f"docs/results.md: section {number} differs from {name}"
        number += 1
