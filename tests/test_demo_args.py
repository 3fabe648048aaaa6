"""The demo refuses bad arguments before it makes any data."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascadeseg.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--minutes", "-1"], "--minutes must be a positive number"),
        (["--minutes", "nan"], "--minutes must be a positive number"),
        (["--deadline", "-3"], "--deadline must be a positive number of minutes"),
        (["--deadline", "inf"], "--deadline must be a positive number of minutes"),
        (["--scale", "0"], "--scale must be a positive number"),
        (["--workers", "-2"], "--workers must be >= 0"),
        (["--cases", "2"], "--cases must leave at least 2 training cases"),
        (["optim.lr=nan"], "optim.lr must be a finite positive number, got nan"),
        (["model.args.base_width=0"], "model.args.base_width must be a positive integer"),
        (
            ["--model", "cunet", "--missing", "t1ce"],
            "--missing: the model cunet has no missing-sequence recipe (cunet_missing_cpu); "
            "use --model two_stage",
        ),
        (["--missing", "t1c"], "--missing: unknown sequence 't1c'"),
        (["--missing", "flair,t1,t1ce,t2"], "all four sequences missing"),
    ],
)
def test_demo_bad_arguments_stop_before_any_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("exit_code", [0, 1])
def test_demo_exit_code_is_the_evaluations(
    exit_code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cascadeseg.demo as demo
    from cascadeseg import cli

    def fake_run_demo(out: Path, **_: object) -> demo.DemoResult:
        summary = {"exit_code": exit_code, "status": "ok" if exit_code == 0 else "incomplete"}
        out = Path(out)
        return demo.DemoResult(out, out, out, out / "r.html", summary, 1.0, {"data": 1.0})

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == exit_code


@pytest.mark.parametrize(
    ("minutes", "spent_s", "after_s", "expected"),
    [
        (7.0, 60.0, 90.0, 7.0),  # 2.5 min before and after: 7.5 left, the budget stands
        (7.0, 90.0, 120.0, 6.5),  # 3.5 min before and after: 6.5 left
        (None, 60.0, 60.0, 8.0),  # no budget of its own: all that is left
        (7.0, 500.0, 200.0, 1.0),  # nothing left: the minimum, never less
    ],
)
def test_training_gets_what_the_deadline_leaves(
    minutes: float | None, spent_s: float, after_s: float, expected: float
) -> None:
    from cascadeseg.demo import MIN_TRAINING_MINUTES, training_minutes

    budget = training_minutes(minutes, 10.0, spent_s, after_s)
    assert budget == pytest.approx(expected)
    assert budget >= MIN_TRAINING_MINUTES


@pytest.mark.parametrize(
    ("minutes", "deadline", "expected"),
    [
        (None, 10.0, None),  # all the deadline leaves
        (None, None, 7.0),  # no deadline: the demo's 7 minutes
        (5.0, 10.0, 5.0),  # asked for: at most that
        (12.0, None, 12.0),
    ],
)
def test_training_asks_for_its_minutes_or_the_deadline(
    minutes: float | None, deadline: float | None, expected: float | None
) -> None:
    from cascadeseg.demo import MINUTES_WITHOUT_DEADLINE, requested_minutes

    assert MINUTES_WITHOUT_DEADLINE == 7.0
    assert requested_minutes(minutes, deadline) == expected


@pytest.mark.parametrize(
    ("recipe", "overrides", "split"),
    [
        # Validation only watches: every training case trains.
        ("two_stage_cpu", (), "all"),
        ("unet3d_cpu", (), "all"),
        ("two_stage_missing_cpu", (), "all"),
        # The user's split stands.
        ("two_stage_cpu", ("data.split=kfold",), "kfold"),
        ("two_stage_cpu", ("data.split=cunet",), "cunet"),
        # Validation chooses: early stopping, best.pt, or the CU-Net paper's own split.
        ("two_stage_cpu", ("train.early_stop_patience=3",), "kfold"),
        ("two_stage_cpu", ("train.snapshots=0",), "kfold"),
        ("cunet_cpu", (), "cunet"),
    ],
)
def test_the_demo_trains_on_every_case_when_validation_only_watches(
    recipe: str, overrides: tuple[str, ...], split: str
) -> None:
    from cascadeseg.config import load_config
    from cascadeseg.demo import _demo_config, validation_only_watches

    cfg = _demo_config(recipe, None, 0, 32, overrides)
    assert cfg.data.split == split
    assert cfg.seed == 0 and cfg.data.folds == 5 and cfg.train.max_minutes == 7.0
    # The recipe as the user sets it, without the demo's choice.
    recipe_cfg = load_config(recipe, list(overrides))
    chosen = any(o.startswith("data.split=") for o in overrides)
    assert validation_only_watches(recipe_cfg) == (split == "all" or (chosen and split == "kfold"))
