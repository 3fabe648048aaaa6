"""The trainer: its pure pieces with hand-computed values, and tiny end-to-end runs.

End-to-end runs use toy cases written at 32^3 with ``write_case`` and a tiny ``unet3d``
(24^3 crops, a few iterations), so the file stays well under a minute on two busy cores.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from cascadeseg.cli import main as cli_main
from cascadeseg.config import Config, OptimConfig, apply_overrides, load_config
from cascadeseg.data.writers import write_case
from cascadeseg.errors import ConfigError
from cascadeseg.models import build_model
from cascadeseg.models.checkpoint import load_checkpoint
from cascadeseg.runtime import to_float32
from cascadeseg.training import session as session_module
from cascadeseg.training.build import build_optimizer, build_training_model
from cascadeseg.training.data import TrainingSampler
from cascadeseg.training.logs import read_steps_csv
from cascadeseg.training.run_state import seed_everything, should_stop_early, step_seed
from cascadeseg.training.schedules import schedule_epoch
from cascadeseg.training.session import TrainingError
from cascadeseg.training.trainer import train
from toy import make_tiny_case

#: A tiny GroupNorm 3D U-Net (two levels of 4 and 8 channels).
TINY_UNET3D = "{base_width: 4, depth: 2, norm_groups: 2}"


def write_toy_dataset(root: Path, n: int = 4, shape: tuple[int, int, int] = (32, 32, 32)) -> Path:
    for i in range(n):
        case = make_tiny_case(shape, seed=i, case_id=f"toy_{i:03d}", with_et=i != n - 1)
        write_case(case, root, "brats2021")
    return root


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


def tiny_config(*extra: str) -> Config:
    return apply_overrides(
        Config(),
        [
            "model.name=unet3d",
            f"model.args={TINY_UNET3D}",
            "data.patch_size=[16,16,16]",
            "data.num_workers=0",
            "data.folds=4",
            "train.epochs=2",
            "train.iters_per_epoch=4",
            "train.batch_size=2",
            "train.precision=fp32",
            "train.snapshots=1",
            "train.tensorboard=false",
            "optim.lr=1e-2",
            "optim.warmup_epochs=0",
            *extra,
        ],
    )


# --------------------------------------------------------------------------------------------
# pure pieces


def test_should_stop_early() -> None:
    assert not should_stop_early([1.0, 0.9, 0.95], patience=2)  # one rise only
    assert should_stop_early([1.0, 0.9, 0.95, 0.92], patience=2)  # two validations above 0.9
    assert not should_stop_early([1.0, 0.9, 0.95, 0.85], patience=2)  # new minimum
    assert not should_stop_early([1.0, 2.0, 3.0], patience=0)  # off


def test_schedule_epoch_fraction_and_time_budget() -> None:
    assert schedule_epoch(3, 5, 10, epochs=20) == 3.5
    # Half the budget spent at epoch 3.5 of 20: the time clock (epoch 10) is ahead.
    assert schedule_epoch(3, 5, 10, epochs=20, elapsed_s=30, budget_s=60) == 10.0
    assert schedule_epoch(3, 5, 10, epochs=20, elapsed_s=999, budget_s=60) == 20.0


def test_epoch_sampler_splits_like_distributed_sampler() -> None:
    single = TrainingSampler(5, 4, seed=3, rank=0, world_size=1)
    ranks = [TrainingSampler(5, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(1)
    full = [i for _, i in single]
    assert [i for _, i in ranks[0]] == full[0::2]
    assert [i for _, i in ranks[1]] == full[1::2]
    # Keys carry the epoch; the order depends on (seed, epoch) only.
    assert {e for e, _ in single} == {1}
    single.set_epoch(2)
    epoch2 = [i for _, i in single]
    assert len(set(epoch2)) == len(full) and set(epoch2) <= set(range(5))  # distinct, in range
    single.set_epoch(1, start=3)
    assert [i for _, i in single] == full[3:]
    assert len(single) == 1


def test_epoch_sampler_long_epoch_cycles_permutations() -> None:
    sampler = TrainingSampler(3, 7, seed=0)
    indices = [i for _, i in sampler]
    assert len(indices) == 7
    assert sorted(indices[:3]) == [0, 1, 2] and sorted(indices[3:6]) == [0, 1, 2]


def test_build_optimizer_kinds_and_weight_decay() -> None:
    params = [torch.nn.Parameter(torch.ones(2))]
    adam = build_optimizer(params, OptimConfig(name="adam", lr=0.1, weight_decay=1e-5))
    assert isinstance(adam, torch.optim.Adam) and not isinstance(adam, torch.optim.AdamW)
    assert adam.param_groups[0]["weight_decay"] == 1e-5
    assert isinstance(build_optimizer(params, OptimConfig(name="adamw")), torch.optim.AdamW)
    sgd = build_optimizer(params, OptimConfig(name="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-5))
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.param_groups[0]["momentum"], sgd.param_groups[0]["weight_decay"]) == (0.9, 5e-5)


class _Out(NamedTuple):
    a: torch.Tensor
    b: tuple[torch.Tensor, ...]


def test_to_float32_walks_outputs() -> None:
    out = _Out(torch.ones(2, dtype=torch.bfloat16), (torch.ones(1, dtype=torch.float16),))
    conv = to_float32(out)
    assert isinstance(conv, _Out)
    assert conv.a.dtype == torch.float32 and conv.b[0].dtype == torch.float32


def test_step_seeds_differ_by_rank_and_step() -> None:
    seeds = {step_seed(0, r, s) for r in range(2) for s in range(50)}
    assert len(seeds) == 100
    assert step_seed(0, 0, 7) == step_seed(0, 0, 7)


# --------------------------------------------------------------------------------------------
# end to end


def test_cli_trains_and_writes_the_run(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            str(
                _write_recipe(
                    tmp_path,
                    tiny_config(
                        "train.epochs=3",
                        "train.iters_per_epoch=8",
                        "train.snapshots=2",
                        "data.foreground_prob=1.0",
                    ),
                )
            ),
            "--data",
            str(toy_data),
            "--out",
            str(out),
            "--no-progress",
            "optim.lr=2e-2",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "final validation Dice: WT" in printed

    losses = [r["loss"] for r in read_steps_csv(out / "steps.csv")]
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.1  # it learns

    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert {"train_loss", "dice_WT", "dice_TC", "dice_ET", "dice_mean", "lr"} <= set(rows[0])
    for name in ("config.yaml", "split.json", "curves.png", "summary.json"):
        assert (out / name).is_file(), name
    snaps = sorted(p.name for p in (out / "checkpoints").glob("snapshot_*.pt"))
    assert snaps == ["snapshot_0001.pt", "snapshot_0002.pt"]

    # Checkpoints load without code execution and rebuild the model alone.
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and last["iteration"] == 24
    assert {"optimizer", "scaler", "rng", "state", "scheduler", "config", "version"} <= set(last)
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    model = build_model(best["model_name"], **best["model_args"])
    model.load_state_dict(best["model"])
    assert "val" in best["extra"]


def _write_recipe(folder: Path, cfg: Config) -> Path:
    from cascadeseg.config import save_config

    path = folder / "recipe.yaml"
    save_config(cfg, path)
    return path


def test_existing_run_needs_resume(toy_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config("train.epochs=1", "train.iters_per_epoch=1", "train.val_every=0")
    train(cfg, toy_data, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg, toy_data, tmp_path / "run", progress=False)
    other = apply_overrides(cfg, ["optim.lr=0.5"])
    with pytest.raises(ConfigError, match=r"config differs .* optim\.lr"):
        train(other, toy_data, tmp_path / "run", resume=True, progress=False)


class _NanAt:
    """Wraps a loss and makes it NaN at one call."""

    def __init__(self, loss: Any, at: int) -> None:
        self.loss, self.at, self.calls = loss, at, 0

    def __call__(self, output: Any, batch: Any, *, aux_weight: float | None = None) -> Any:
        total, parts = self.loss(output, batch, aux_weight=aux_weight)
        self.calls += 1
        if self.calls - 1 == self.at:
            total = total * float("nan")
        return total, parts


def test_nonfinite_loss_stops_naming_the_step(
    toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = session_module.build_loss
    monkeypatch.setattr(
        session_module, "build_loss", lambda model, cfg: _NanAt(real(model, cfg), 5)
    )
    cfg = tiny_config("train.val_every=0")
    with pytest.raises(TrainingError, match=r"non-finite loss .* epoch 1, iteration 1 \(step 5"):
        train(cfg, toy_data, tmp_path / "a", progress=False)

    skip = apply_overrides(cfg, ["train.skip_nonfinite=true"])
    train(skip, toy_data, tmp_path / "b", progress=False)
    rows = read_steps_csv(tmp_path / "b" / "steps.csv")
    assert np.isnan(rows[5]["loss"]) and np.isfinite(rows[6]["loss"])
    with (tmp_path / "b" / "metrics.csv").open() as fh:
        assert [float(r["skipped"]) for r in csv.DictReader(fh)] == [0.0, 1.0]


def test_time_budget_stops_cleanly(toy_data: Path, tmp_path: Path) -> None:
    # A budget of 6 microseconds: shorter than any step on any machine (6 ms was not: a fast
    # CPU finished the first 16^3 step inside it).
    cfg = tiny_config("train.max_minutes=1e-7", "train.epochs=50")
    out = train(cfg, toy_data, tmp_path / "run", progress=False)
    summary = (out / "summary.json").read_text()
    assert '"stop_reason": "time_budget"' in summary
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["iteration"] == 1 and last["state"]["finished"]
    assert (out / "checkpoints" / "best.pt").is_file()


def cpu_cascade_config(*extra: str) -> Config:
    """The shipped ``two_stage_cpu`` recipe on the toy cases: 16^3 crops, batch 1, no budget."""
    return load_config(
        "two_stage_cpu",
        [
            "data.target_spacing=null",
            "data.patch_size=[16,16,16]",
            "data.num_workers=0",
            "data.folds=4",
            "train.batch_size=1",
            "train.val_cases=1",
            "train.max_minutes=null",
            *extra,
        ],
    )


def test_shipped_cpu_recipe_runs_a_step(toy_data: Path, tmp_path: Path) -> None:
    cfg = cpu_cascade_config("train.epochs=1", "train.iters_per_epoch=1")
    out = train(cfg, toy_data, tmp_path / "run", progress=False)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["model_name"] == "two_stage"


def test_stage1_first_trains_stage_one_then_the_cascade(toy_data: Path, tmp_path: Path) -> None:
    cfg = cpu_cascade_config(
        "model.args={base_width: 4, norm_groups: 2, blocks: [1, 1], dropout: 0.0}",
        "train.epochs=4",
        "train.iters_per_epoch=2",
        "train.val_every=1",
        "train.snapshots=4",
        "train.stage1_first=0.5",
    )
    initial = build_training_model_weights(cfg)
    out = train(cfg, toy_data, tmp_path / "run", progress=False)
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["stage1_only"]) for r in rows] == [1.0, 1.0, 0.0, 0.0]
    # The loss of stage 1 alone in the first phase, the cascade's parts in the second.
    # Columns say what they hold: train_loss_stage1 is stage 1's loss (not a Dice score).
    assert not any(k.startswith("train_dice") for k in rows[0])
    assert all(r["train_loss"] and not r["train_loss_stage2"] for r in rows[:2])
    assert all(r["train_loss_stage1"] and r["train_loss_stage2"] for r in rows[2:])
    # Snapshots and best.pt come from the end-to-end epochs only.
    snapshots = sorted(p.name for p in (out / "checkpoints").glob("snapshot_*.pt"))
    assert snapshots == ["snapshot_0002.pt", "snapshot_0003.pt"]
    assert load_checkpoint(out / "checkpoints" / "best.pt")["extra"]["epoch"] in (2, 3)
    # Stage 2 trained: its weights moved from their initial values.
    final = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    moved = [not torch.equal(initial[k], final[k]) for k in initial if k.startswith("stage2.")]
    assert any(moved)


def build_training_model_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """The initial weights a run of ``cfg`` starts from (the trainer seeds before building)."""
    seed_everything(cfg.seed)
    return {k: v.clone() for k, v in build_training_model(cfg).state_dict().items()}


def test_stage1_first_is_checked(toy_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stage1_first"):
        train(tiny_config("train.stage1_first=1.0"), toy_data, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="not a cascade"):
        train(tiny_config("train.stage1_first=0.5"), toy_data, tmp_path / "b", progress=False)


def test_bias_field_settings_are_checked(toy_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="crop_overhang"):
        train(tiny_config("data.crop_overhang=0.7"), toy_data, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="bias_field_prob"):
        train(tiny_config("data.bias_field_prob=1.5"), toy_data, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="bias_field_strength"):
        train(
            tiny_config("data.bias_field_strength=[0.3,0.1]"),
            toy_data,
            tmp_path / "b",
            progress=False,
        )
    with pytest.raises(ConfigError, match="bias_field_spacing_mm"):
        train(tiny_config("data.bias_field_spacing_mm=0"), toy_data, tmp_path / "c", progress=False)
    # 2D models train on slices: 3D-only settings refused before any preprocessing
    with pytest.raises(ConfigError, match="compartment_contrast "):
        train(tiny_config("data.compartment_contrast=1"), toy_data, tmp_path / "g", progress=False)
    with pytest.raises(ConfigError, match="compartment_contrast_channels"):
        cfg = tiny_config("data.compartment_contrast_channels=5")
        train(cfg, toy_data, tmp_path / "h", progress=False)
    for name, setting in (
        ("d", "data.bias_field_prob=0.5"),
        ("e", "data.label_resampling=soft"),
        ("f", "data.compartment_contrast_prob=0.5"),
        ("i", "data.enhancement_erase_prob=0.5"),
    ):
        with pytest.raises(ConfigError, match="2D slices"):
            cfg = tiny_config("model.name=unet2d", "model.args={}", setting)
            train(cfg, toy_data, tmp_path / name, progress=False)
