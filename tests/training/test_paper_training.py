"""Paper procedures in the trainer: the monitored validation objective, the LWS coverage check,
training on all cases, crops from the whole grid, and the Table 1 baselines' CPU recipes."""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import tiny_config, write_toy_dataset

import cascadeseg.training.trainer as trainer_module
from cascadeseg.config import Config, apply_overrides, load_config
from cascadeseg.data.datasets import CropDataset3D
from cascadeseg.data.preprocess import Preprocessed, preprocess_case
from cascadeseg.errors import ConfigError
from cascadeseg.inference.loading import load_models
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.predictor import predict_case
from cascadeseg.inference.volume import slice_stack
from cascadeseg.losses import build_loss
from cascadeseg.models import build_model
from cascadeseg.training.data import split_case_ids
from cascadeseg.training.distributed import DistInfo
from cascadeseg.training.monitor import lws_coverage, warn_lws_coverage
from cascadeseg.training.schedules import aux_weight_at
from cascadeseg.training.trainer import check_config, read_summary, train
from cascadeseg.training.validation import validation_objective
from toy import make_tiny_case


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("paper") / "data", n=4)


@pytest.fixture(scope="module")
def tiny_cases() -> list[Preprocessed]:
    return [
        preprocess_case(make_tiny_case((24, 24, 16), seed=i, case_id=f"c{i}")) for i in range(2)
    ]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------------
# train.monitor


def test_validation_objective_is_the_training_loss_on_the_validation_slices(
    tiny_cases: list[Preprocessed],
) -> None:
    torch.manual_seed(0)
    model = build_model("cunet", base_width=4)
    cfg = apply_overrides(Config(), ["model.name=cunet", "loss.lws=false"])
    loss_fn = build_loss(model, cfg.loss)
    case = tiny_cases[0]
    value = validation_objective(
        model,
        loss_fn,
        [case],
        cfg,
        DistInfo(),
        aux_weight=aux_weight_at(15, cfg.loss),
        slice_batch=1000,
    )
    # By hand: every slice holding brain in one batch, eval mode, auxiliary outputs included
    # (Eq. 4 with the auxiliary weight of epoch 15: 0.01).
    label = torch.from_numpy(np.array(case.label, dtype=np.int64))
    brain = torch.from_numpy(np.array(case.brain_mask)) | (label > 0)
    kept = [z for z in range(label.shape[-1]) if bool(brain[..., z].any())]
    x = torch.from_numpy(np.concatenate([slice_stack(case.image, z, z + 1, 0) for z in kept]))
    batch = {
        "label": label[..., kept].permute(2, 0, 1),
        "brain_mask": brain[..., kept].permute(2, 0, 1),
    }
    with torch.no_grad():
        out = model.eval()(x, aux=True)
        expected, parts = loss_fn(out, batch, aux_weight=aux_weight_at(15, cfg.loss))
    assert len(out.aux) == 8 and parts["aux_weight"] == pytest.approx(0.01)
    assert parts["loss_aux"] > 0
    assert value == pytest.approx(float(expected), rel=1e-5)
    # LWS draws from a fixed seed: the same value twice, and the global RNG is untouched.
    cfg_lws = apply_overrides(cfg, ["loss.lws=true"])
    lws_loss = build_loss(model, cfg_lws.loss)
    state = torch.get_rng_state()
    a = validation_objective(model, lws_loss, [case], cfg_lws, DistInfo(), aux_weight=0.1)
    b = validation_objective(model, lws_loss, [case], cfg_lws, DistInfo(), aux_weight=0.1)
    assert a == b and torch.equal(state, torch.get_rng_state())


def _unet2d_config(*extra: str) -> Config:
    return tiny_config(
        "model.name=unet2d",
        "model.args={base_width: 4, depth: 2}",
        "data.patch_size=[32,32]",
        "loss.lws=false",
        "train.iters_per_epoch=1",
        "train.val_every=1",
        "train.val_cases=1",
        "train.snapshots=0",
        *extra,
    )


def test_monitor_objective_drives_early_stopping(
    toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The objective rises from the second validation on, the soft Dice is left as it comes.
    values = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    calls: list[float] = []

    def rising(*args: object, aux_weight: float, **kwargs: object) -> float:
        calls.append(aux_weight)
        return next(values)

    monkeypatch.setattr(trainer_module, "validation_objective", rising)
    cfg = _unet2d_config("train.epochs=5", "train.early_stop_patience=1", "train.monitor=objective")
    out = train(cfg, toy_data, tmp_path / "objective", progress=False)
    rows = _rows(out / "metrics.csv")
    assert [float(r["val_objective"]) for r in rows] == [1.0, 2.0]
    assert calls == [aux_weight_at(0, cfg.loss), aux_weight_at(1, cfg.loss)]  # once per epoch
    assert read_summary(out)["stop_reason"] == "early_stop"

    # monitor=dice: the objective is neither computed nor watched.
    calls.clear()
    dice = apply_overrides(cfg, ["train.monitor=dice", "train.early_stop_patience=0"])
    out = train(dice, toy_data, tmp_path / "dice", progress=False)
    assert calls == [] and "val_objective" not in _rows(out / "metrics.csv")[0]


def test_cunet_recipes_watch_the_objective() -> None:
    for name in ("cunet_brats17", "cunet_cpu", "bfcn_brats17", "drn_brats17"):
        assert load_config(name).train.monitor == "objective", name
    paper = load_config("cunet_brats17")
    assert paper.model.args["unet2_image_input"] is False
    assert build_model("cunet", **paper.model.args).unet2.encoders[0].conv1.in_channels == 64


# --------------------------------------------------------------------------------------------
# beta * p2 * epoch >= 1


def test_lws_coverage_condition_warns(tiny_cases: list[Preprocessed]) -> None:
    assert lws_coverage(1.5, 0.2, 4) == pytest.approx(1.2)
    cfg = load_config("cunet_cpu")
    with pytest.warns(UserWarning, match=r"beta \* p2 \* epochs = .* < 1"):
        low = warn_lws_coverage(cfg, tiny_cases, passes=0.01)
    assert low is not None and low < 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        high = warn_lws_coverage(cfg, tiny_cases, passes=1e6)
        assert high is not None and high >= 1
        # No LWS, or a model that does not use it: nothing to check.
        assert warn_lws_coverage(apply_overrides(cfg, ["loss.lws=false"]), tiny_cases, 0.01) is None
        assert warn_lws_coverage(load_config("bfcn_cpu"), tiny_cases, 0.01) is None


def test_training_start_checks_lws_coverage(toy_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        "model.name=cunet",
        "model.args={base_width: 4}",
        "data.patch_size=[32,32]",
        "train.epochs=1",
        "train.iters_per_epoch=1",
        "train.val_every=0",
        "train.snapshots=0",
    )
    with pytest.warns(UserWarning, match="loss weighted sampling"):
        train(cfg, toy_data, tmp_path / "run", progress=False)


# --------------------------------------------------------------------------------------------
# data.split = all


def test_split_all_keeps_every_case_for_training() -> None:
    cfg = apply_overrides(Config(), ["data.split=all"])
    split = split_case_ids(["b", "a", "c"], cfg)
    assert split == {"train": ["a", "b", "c"], "val": []}
    with pytest.raises(ConfigError, match=r"data\.split must be one of kfold, cunet, all"):
        apply_overrides(Config(), ["data.split=half"])


def test_all_data_run_and_mixed_ensemble_predict(toy_data: Path, tmp_path: Path) -> None:
    all_cfg = tiny_config(
        "data.split=all", "train.epochs=2", "train.snapshots=2", "train.early_stop_patience=2"
    )
    with pytest.warns(UserWarning, match="no validation cases"):
        all_run = train(all_cfg, toy_data, tmp_path / "all", progress=False)
    split = json.loads((all_run / "split.json").read_text())
    assert len(split["train"]) == 4 and split["val"] == []
    rows = _rows(all_run / "metrics.csv")
    assert len(rows) == 2 and "dice_mean" not in rows[0]  # fixed epochs, never validated
    assert read_summary(all_run)["stop_reason"] == "epochs"
    snaps = sorted(p.name for p in (all_run / "checkpoints").glob("snapshot_*.pt"))
    assert snaps == ["snapshot_0000.pt", "snapshot_0001.pt"]
    assert (all_run / "checkpoints" / "best.pt").is_file()

    fold_run = train(
        tiny_config("train.epochs=1", "train.snapshots=0"),
        toy_data,
        tmp_path / "fold0",
        progress=False,
    )
    members = load_models([fold_run, all_run])
    assert len(members) == 3  # the fold's best.pt and the all-data run's 2 snapshots
    case = make_tiny_case((32, 32, 32), seed=9, case_id="new")
    result = predict_case(case, members, PredictOptions(progress=False, device="cpu", tta=False))
    assert result.label.shape == case.label.shape
    assert len(result.info["members"]) == 3


# --------------------------------------------------------------------------------------------
# data.crop_region


def test_volume_crops_cover_the_whole_original_grid(tiny_cases: list[Preprocessed]) -> None:
    # The 24 x 24 x 16 brain box cut out of a 40 x 36 x 24 grid at (5, 6, 3).
    box = ((5, 29), (6, 30), (3, 19))
    geometry = dataclasses.replace(
        tiny_cases[0].geometry, resampled_shape=(40, 36, 24), crop_box=box
    )
    case = dataclasses.replace(tiny_cases[0], geometry=geometry)
    offset = np.array([a for a, _ in box])
    full = np.array(geometry.resampled_shape)
    size = (16, 16, 12)
    rng = np.random.default_rng(0)
    volume = CropDataset3D([case], patch_size=size, crop_region="volume")
    starts = np.array([volume.crop_start(rng, 0) for _ in range(3000)]) + offset
    # Uniform over the full grid: every start from 0 to full - size, nothing beyond.
    np.testing.assert_array_equal(starts.min(axis=0), 0)
    np.testing.assert_array_equal(starts.max(axis=0), full - np.array(size))
    brain = CropDataset3D([case], patch_size=size, crop_region="brain")
    starts = np.array([brain.crop_start(rng, 0) for _ in range(3000)])
    low = np.minimum(0, np.array(case.shape) - size)
    high = np.maximum(0, np.array(case.shape) - size)
    np.testing.assert_array_equal(starts.min(axis=0), low)
    np.testing.assert_array_equal(starts.max(axis=0), high)
    item = volume[0]
    assert item["image"].shape == (4, *size)
    # Tumour-centred crops still centre on tumour voxels of the case (shifted into the grid).
    centred = CropDataset3D([case], patch_size=size, crop_region="volume", foreground_prob=1.0)
    assert all(int((centred[i]["label"] > 0).sum()) > 0 for i in range(20))
    with pytest.raises(ValueError, match="crop_region"):
        CropDataset3D([case], patch_size=size, crop_region="box")


def test_paper_recipe_crops_from_the_volume() -> None:
    assert load_config("two_stage_brats19").data.crop_region == "volume"
    assert Config().data.crop_region == "brain"
    with pytest.raises(ConfigError, match="crop_region"):
        check_config(apply_overrides(Config(), ["data.crop_region=box"]))
    with pytest.raises(ConfigError, match=r"train\.monitor"):
        check_config(apply_overrides(Config(), ["train.monitor=accuracy"]))


def test_volume_crops_train(toy_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config("data.crop_region=volume", "train.epochs=1", "train.val_every=0")
    out = train(cfg, toy_data, tmp_path / "run", progress=False)
    assert read_summary(out)["stop_reason"] == "epochs"


# --------------------------------------------------------------------------------------------
# CPU recipes of the Table 1 baselines


@pytest.mark.parametrize("recipe", ["bfcn_cpu", "drn_cpu"])
def test_baseline_cpu_recipes_train_two_epochs(recipe: str, toy_data: Path, tmp_path: Path) -> None:
    cfg = load_config(
        recipe,
        [
            "data.target_spacing=null",
            "data.patch_size=[32,32]",
            "data.num_workers=0",
            "train.epochs=2",
            "train.iters_per_epoch=2",
            "train.batch_size=2",
            "train.val_every=1",
            "train.val_cases=1",
            "train.max_minutes=null",
            "train.tensorboard=false",
            "train.precision=fp32",
        ],
    )
    out = train(cfg, toy_data, tmp_path / recipe, progress=False)
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 2 and all(np.isfinite(float(r["val_objective"])) for r in rows)
    assert all(np.isfinite(float(r["dice_mean"])) for r in rows)
    members = load_models([out])
    assert members[0].name == cfg.model.name and members[0].spatial_dims == 2
