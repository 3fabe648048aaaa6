"""Time-budgeted training: ``train --minutes``, the start summary, one line per epoch, and a
learning-rate schedule that fits the steps the budget holds."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from test_trainer import tiny_config, write_toy_dataset

from cascadeseg.cli import main as cli_main
from cascadeseg.commands.train import budget_overrides
from cascadeseg.config import OptimConfig, load_config, save_config
from cascadeseg.training import session as session_module
from cascadeseg.training.data import batch_to_device
from cascadeseg.training.logs import read_steps_csv
from cascadeseg.training.schedules import budget_fraction, lr_at, schedule_epoch
from cascadeseg.training.trainer import train


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


def test_budget_fraction_counts_expected_steps() -> None:
    # 10 s of 60 spent in 5 steps, 2 s a step now: 25 more steps expected, 5 of 30 done.
    assert budget_fraction(5, 10.0, 60.0, 2.0) == pytest.approx(5 / 30)
    # Before any step time is measured: the spent share of the time.
    assert budget_fraction(1, 15.0, 60.0, None) == pytest.approx(0.25)
    # Never the end of the decay while a step runs, even past the budget.
    assert budget_fraction(0, 0.0, 60.0, None) == 0.0
    assert budget_fraction(9, 59.9, 60.0, 2.0) == pytest.approx(0.9)
    assert budget_fraction(9, 75.0, 60.0, 2.0) == pytest.approx(0.9)
    assert budget_fraction(9, 75.0, 60.0, None) == pytest.approx(0.9)


def _simulated_lrs(startup_s: float, step_s: float, budget_s: float) -> list[float]:
    """The learning rates of a budgeted poly run with a slow first step, as the trainer sets
    them (the step time is the median of the steps measured so far)."""
    optim = OptimConfig(lr=3e-3, schedule="poly", warmup_epochs=2)
    epochs, iters = 30, 60
    lrs, elapsed, step = [], 0.0, 0
    while elapsed < budget_s:
        measured = step_s if step >= 2 else None
        epoch_f = schedule_epoch(
            step // iters,
            step % iters,
            iters,
            epochs=epochs,
            elapsed_s=elapsed + (startup_s if step == 0 else step_s) / 2,
            budget_s=budget_s,
            step=step,
            step_s=measured,
        )
        lrs.append(lr_at(epoch_f, optim, epochs))
        elapsed += startup_s if step == 0 else step_s
        step += 1
    return lrs


@pytest.mark.parametrize(("startup_s", "step_s"), [(10.0, 4.0), (1.0, 0.4), (20.0, 1.0)])
def test_short_budget_warms_up_and_decays_over_its_steps(startup_s: float, step_s: float) -> None:
    # The reported case: a 45-second run whose lr reached 0 at step 9.
    lrs = _simulated_lrs(startup_s, step_s, budget_s=45.0)
    assert all(lr > 0 for lr in lrs), "lr reached 0 before the budget was spent"
    peak = max(lrs)
    assert peak > 0.5 * 3e-3  # the warm-up ends and the run trains at a useful rate
    # The decay spans the run: the peak is in its first third, the end well below the peak.
    assert lrs.index(peak) < len(lrs) / 3 + 1
    assert lrs[-1] < 0.5 * peak
    # Half way through the steps the rate is still at least a third of the peak.
    assert lrs[len(lrs) // 2] > peak / 3


def test_minutes_flag_sets_the_budget_and_the_time_schedule() -> None:
    assert budget_overrides(None, ["a=1"]) == ["a=1"]
    assert budget_overrides(2.5, []) == ["train.max_minutes=2.5", "train.time_schedule=true"]
    kept = budget_overrides(2.5, ["train.time_schedule=false"])
    assert kept == ["train.time_schedule=false", "train.max_minutes=2.5"]
    cfg = load_config("two_stage_brats19", budget_overrides(1.0, []))
    assert (cfg.train.max_minutes, cfg.train.time_schedule) == (1.0, True)


@pytest.mark.parametrize("value", ["0", "-3", "nan", "soon"])
def test_minutes_flag_refuses_bad_values(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "two_stage_cpu", "--data", "d", "--out", "o", "--minutes", value])
    assert exc.value.code == 2
    assert "--minutes" in capsys.readouterr().err


class FakeClock:
    """``time.monotonic`` of the trainer: 0.1 s a call, plus a slow start (3 s) on the first
    training step, so a budgeted run is the same on a busy machine as on a quiet one."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.started = False

    def monotonic(self) -> float:
        self.now += 0.1
        return self.now

    def slow_start(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.started:
            self.started = True
            self.now += 3.0
        return batch_to_device(batch, *args, **kwargs)


def test_tiny_budget_trains_with_a_positive_lr_to_the_end(
    toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(session_module, "time", clock)
    monkeypatch.setattr(session_module, "batch_to_device", clock.slow_start)
    cfg = tiny_config(
        "train.epochs=1000",
        "train.iters_per_epoch=8",
        "train.val_every=0",
        "train.max_minutes=0.15",  # 9 s on the fake clock, a third of it the slow start
        "train.time_schedule=true",
        "optim.warmup_epochs=50",  # 5% of the run
        "data.foreground_prob=1.0",
    )
    out = train(cfg, toy_data, tmp_path / "run", progress=False)
    steps = read_steps_csv(out / "steps.csv")
    assert len(steps) > 12
    lrs = [r["lr"] for r in steps]
    assert all(lr > 0 for lr in lrs), "lr reached 0 before the budget was spent"
    peak = max(lrs)
    assert peak > 0.8 * 1e-2  # the warm-up ends: the slow start did not eat the schedule
    assert lrs.index(peak) < len(lrs) / 4
    assert lrs[len(lrs) // 2] > peak / 3 and lrs[-1] < peak / 3  # the decay spans the steps
    losses = [r["loss"] for r in steps]
    tenth = max(2, len(losses) // 10)
    assert sum(losses[-tenth:]) / tenth < 0.9 * sum(losses[:tenth]) / tenth  # it learned


def test_train_command_prints_the_plan_and_one_line_per_epoch(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "tiny.yaml"
    save_config(tiny_config("train.epochs=2", "train.iters_per_epoch=2"), recipe)
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            str(recipe),
            "--data",
            str(toy_data),
            "--out",
            str(out),
            "--no-progress",
            "--minutes",
            "5",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    for expected in (
        f"recipe: {recipe}",
        "model: unet3d, ",
        " parameters",
        "cases: 4 labelled; train 3, validation 1",
        "device: cpu",
        "precision: fp32",
        "budget: 5 min or 2 epochs x 2 iterations",
    ):
        assert expected in err, expected
    epoch_lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert all(" step " in x and " loss " in x and " lr " in x and "min]" in x for x in epoch_lines)
    assert "val Dice" in epoch_lines[-1]
    saved = load_config(out / "config.yaml")
    assert (saved.train.max_minutes, saved.train.time_schedule) == (5.0, True)
    with (out / "metrics.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2
