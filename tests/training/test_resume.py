"""Kill and resume: the resumed run repeats the uninterrupted one exactly (losses, parameters)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cascadeseg.config import Config, apply_overrides
from cascadeseg.data.writers import write_case
from cascadeseg.models.checkpoint import load_checkpoint
from cascadeseg.training.logs import read_steps_csv
from cascadeseg.training.run_state import rng_states, set_rng_states
from cascadeseg.training.session import SimulatedKill
from cascadeseg.training.trainer import train
from toy import make_tiny_case

#: A tiny CU-Net: its loss weighted sampling draws from the global torch generator, so the test
#: covers the per-step re-seeding; BatchNorm running statistics must come back too.
TINY_CUNET = "{base_width: 4, depth: 2}"
TINY_UNET3D = "{base_width: 4, depth: 2, norm_groups: 2}"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "data"
    for i in range(4):
        write_case(make_tiny_case((32, 32, 32), seed=i, case_id=f"toy_{i:03d}"), root, "brats2021")
    return root


def resume_config() -> Config:
    return apply_overrides(
        Config(),
        [
            "model.name=cunet",
            f"model.args={TINY_CUNET}",
            "data.patch_size=[32,32]",
            "data.num_workers=0",
            "data.folds=4",
            "loss.contour_width=2",
            "train.epochs=2",
            "train.iters_per_epoch=3",
            "train.batch_size=2",
            "train.precision=fp32",
            "train.snapshots=1",
            "train.val_every=2",
            "train.checkpoint_every=2",
            "train.tensorboard=false",
            "optim.lr=1e-2",
            "optim.warmup_epochs=1",
        ],
    )


def _losses(run: Path) -> list[float]:
    return [row["loss"] for row in read_steps_csv(run / "steps.csv")]


def test_kill_and_resume_repeats_the_run(toy_data: Path, tmp_path: Path) -> None:
    kill_after = 5  # mid-epoch 1; the last checkpoint is from step 4 (checkpoint_every=2)
    cfg = resume_config()
    whole = train(cfg, toy_data, tmp_path / "whole", progress=False)

    broken = tmp_path / "broken"
    with pytest.raises(SimulatedKill):
        train(cfg, toy_data, broken, progress=False, _stop_after_steps=kill_after)
    # The kill left steps.csv one step ahead of the last checkpoint.
    assert len(_losses(broken)) == kill_after
    assert load_checkpoint(broken / "checkpoints" / "last.pt")["iteration"] == 4
    train(cfg, toy_data, broken, resume=True, progress=False)

    assert _losses(broken) == _losses(whole)
    assert len(_losses(whole)) == 6
    a = load_checkpoint(whole / "checkpoints" / "last.pt")
    b = load_checkpoint(broken / "checkpoints" / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["state"]["history"][-1]["dice_mean"] == b["state"]["history"][-1]["dice_mean"]
    with (whole / "metrics.csv").open() as fa, (broken / "metrics.csv").open() as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    timing = {"minutes", "it_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in ra] == [
        {k: v for k, v in r.items() if k not in timing} for r in rb
    ]


def test_resume_extends_a_finished_run(toy_data: Path, tmp_path: Path) -> None:
    cfg = apply_overrides(
        resume_config(),
        [
            "model.name=unet3d",
            f"model.args={TINY_UNET3D}",
            "data.patch_size=[16,16,16]",
            "train.epochs=1",
            "train.val_every=0",
        ],
    )
    run = train(cfg, toy_data, tmp_path / "run", progress=False)
    longer = apply_overrides(cfg, ["train.epochs=2"])
    train(longer, toy_data, run, resume=True, progress=False)
    assert len(_losses(run)) == 6
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


def test_rng_states_round_trip() -> None:
    saved = rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    set_rng_states(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_checkpoint_state_loads_weights_only(tmp_path: Path) -> None:
    from cascadeseg.models.checkpoint import atomic_torch_save

    atomic_torch_save({"rng": rng_states()}, tmp_path / "r.pt")
    loaded = torch.load(tmp_path / "r.pt", weights_only=True)
    set_rng_states(loaded["rng"])


@pytest.mark.parametrize("kill_after", [3, 5])  # resumed inside the stage-1 / the cascade phase
def test_resume_keeps_the_stage1_first_phase(
    toy_data: Path, tmp_path: Path, kill_after: int
) -> None:
    cfg = apply_overrides(
        resume_config(),
        [
            "model.name=two_stage",
            "model.args={base_width: 4, norm_groups: 2, blocks: [1, 1], dropout: 0.0}",
            "data.patch_size=[16,16,16]",
            "train.stage1_first=0.5",
            "train.val_every=0",
        ],
    )
    whole = train(cfg, toy_data, tmp_path / "whole", progress=False)
    broken = tmp_path / "broken"
    with pytest.raises(SimulatedKill):
        train(cfg, toy_data, broken, progress=False, _stop_after_steps=kill_after)
    train(cfg, toy_data, broken, resume=True, progress=False)
    assert _losses(broken) == _losses(whole)
    with (broken / "metrics.csv").open() as fh:
        assert [float(r["stage1_only"]) for r in csv.DictReader(fh)] == [1.0, 0.0]


def test_averaged_weights_are_saved_and_resumed(toy_data: Path, tmp_path: Path) -> None:
    """``train.ema_width``: snapshots and ``best.pt`` hold the average, ``last.pt`` the raw
    weights beside it, and a killed run resumed goes on to the same average."""
    cfg = apply_overrides(resume_config(), ["train.ema_width=0.15"])
    whole = train(cfg, toy_data, tmp_path / "whole", progress=False)
    last = load_checkpoint(whole / "checkpoints" / "last.pt")
    assert last["average"]["updates"] == 6
    snapshots = list((whole / "checkpoints").glob("snapshot_*.pt"))
    assert len(snapshots) == 1
    snapshot = load_checkpoint(snapshots[0])
    assert snapshot["config"]["train"]["ema_width"] == 0.15
    differs = False
    for key, value in last["average"]["model"].items():
        assert torch.equal(value, snapshot["model"][key]), key
        differs |= not torch.equal(value, last["model"][key])
    assert differs, "the average equals the last iterate"

    broken = tmp_path / "broken"
    with pytest.raises(SimulatedKill):
        train(cfg, toy_data, broken, progress=False, _stop_after_steps=5)
    train(cfg, toy_data, broken, resume=True, progress=False)
    resumed = load_checkpoint(broken / "checkpoints" / "last.pt")
    assert _losses(broken) == _losses(whole)
    for key, value in last["average"]["model"].items():
        assert torch.equal(value, resumed["average"]["model"][key]), key


def test_predict_from_last_pt_uses_the_average(toy_data: Path, tmp_path: Path) -> None:
    """A run's ``last.pt`` loaded for inference gives the averaged weights, not the iterate."""
    from cascadeseg.inference.loading import load_checkpoint_model

    cfg = apply_overrides(resume_config(), ["train.ema_width=0.2"])
    run = train(cfg, toy_data, tmp_path / "run", progress=False)
    path = run / "checkpoints" / "last.pt"
    last = load_checkpoint(path)
    network = load_checkpoint_model(path).network
    state = network.state_dict()
    for key, value in last["average"]["model"].items():
        assert torch.equal(state[key], value), key
    assert any(not torch.equal(state[k], v) for k, v in last["model"].items())
