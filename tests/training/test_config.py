"""Config loading, overrides, unknown keys, types, shipped recipes, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cascadeseg.config import (
    Config,
    apply_overrides,
    from_dict,
    load_config,
    recipe_dirs,
    resolve_recipe,
    save_config,
    to_dict,
)
from cascadeseg.errors import ConfigError
from cascadeseg.models.checkpoint import atomic_torch_save, load_checkpoint, make_checkpoint
from cascadeseg.training.trainer import check_config

RECIPES = sorted(p.stem for p in recipe_dirs()[0].glob("*.yaml"))


def test_defaults_are_the_two_stage_paper() -> None:
    cfg = load_config(None)
    assert cfg.model.name == "two_stage"
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 1e-4, 1e-5)
    assert (cfg.train.epochs, cfg.optim.warmup_epochs, cfg.train.snapshots) == (405, 5, 8)
    assert cfg.data.patch_size == (128, 128, 128)


def test_overrides_parse_yaml_values() -> None:
    cfg = apply_overrides(
        Config(),
        [
            "optim.lr=3e-4",  # YAML 1.1 reads "3e-4" as a string: must still become 3e-4
            "train.epochs=7",
            "data.patch_size=[64,48,32]",
            "data.target_spacing=[2,2,2]",
            "train.max_minutes=1.5",
            "model.args={base_width: 8}",
            "model.args.dropout=0",
            "train.precision=fp32",
            "train.iters_per_epoch=null",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 7
    assert cfg.data.patch_size == (64, 48, 32)
    assert cfg.data.target_spacing == (2.0, 2.0, 2.0)
    assert cfg.train.max_minutes == 1.5
    assert cfg.model.args == {"base_width": 8, "dropout": 0}
    assert cfg.train.iters_per_epoch is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown config key(s) train.epoch"),
        ("nosection.x=1", "unknown config key(s) nosection"),
        ("train.epochs=three", "train.epochs: expected an integer"),
        ("train.epochs=2.5", "train.epochs: expected an integer"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("train.tensorboard=maybe", "train.tensorboard: expected true/false"),
        ("data.target_spacing=[1,2]", "data.target_spacing: expected 3 values"),
        ("train.epochs", "is not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(Config(), [override])


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        load_config(path)


def test_non_mapping_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_missing_recipe_names_it() -> None:
    with pytest.raises(ConfigError, match="no_such_recipe: no such config file"):
        resolve_recipe("no_such_recipe")


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = apply_overrides(Config(), ["optim.lr=2e-3", "data.patch_size=[32,32,32]", "seed=5"])
    save_config(cfg, tmp_path / "c.yaml")
    back = load_config(tmp_path / "c.yaml")
    assert back == cfg


def test_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    cfg = apply_overrides(Config(), ["model.args={base_width: 4}", "train.max_minutes=2"])
    ckpt = make_checkpoint(
        model_name="unet3d",
        model_args={"base_width": 4},
        model_state={"w": torch.ones(2)},
        config=to_dict(cfg),
        epoch=3,
    )
    atomic_torch_save(ckpt, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")  # weights_only=True inside
    assert from_dict(loaded["config"], Config) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.precision=fp8", "train.precision"),
        ("optim.name=lamb", "optim.name"),
        ("train.epochs=0", "train.epochs"),
        ("data.split=random", "data.split"),
        ("optim.lr=0", "optim.lr"),
    ],
)
def test_check_config_rejects(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(apply_overrides(Config(), [override]))


def test_shipped_recipes_are_present() -> None:
    expected = {
        "two_stage_brats19",
        "cunet_brats17",
        "unet2d_brats17",
        "unet3d_brats19",
        "two_stage_cpu",
        "cunet_cpu",
        "unet2d_cpu",
        "unet3d_cpu",
    }
    assert expected <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipe_loads_and_checks(name: str) -> None:
    cfg = load_config(name)
    check_config(cfg)
    if name.endswith("_cpu"):
        assert cfg.train.max_minutes is not None
        # Never bf16 blindly (emulated bf16 runs about 13x slower on AVX2 CPUs): auto picks
        # it only where native; two_stage_cpu pins fp32, measured faster at its widths.
        assert cfg.train.precision in ("auto", "fp32")


def test_paper_recipes_hold_the_papers_settings() -> None:
    two = load_config("two_stage_brats19")
    assert (two.optim.name, two.optim.lr, two.optim.weight_decay) == ("adam", 1e-4, 1e-5)
    assert (two.train.batch_size, two.data.patch_size, two.train.epochs) == (1, (128,) * 3, 405)
    assert (two.optim.schedule, two.optim.warmup_epochs, two.optim.poly_power) == ("poly", 5, 0.9)
    assert (two.train.snapshots, two.train.precision) == (8, "bf16")
    cu = load_config("cunet_brats17")
    assert (cu.optim.name, cu.optim.lr, cu.optim.momentum) == ("sgd", 1e-3, 0.9)
    assert (cu.optim.schedule, cu.optim.step_every, cu.optim.step_gamma) == ("step", 10, 0.1)
    assert (cu.optim.min_lr, cu.optim.weight_decay) == (1e-7, 5e-5)
    assert (cu.loss.lws_alpha, cu.loss.lws_beta, cu.loss.contour_width) == (2.0, 1.5, 10)
    assert (cu.loss.aux_weight, cu.loss.aux_decay, cu.loss.aux_min) == (0.1, 0.1, 1e-3)
    assert cu.train.early_stop_patience > 0
    assert (cu.data.split, cu.data.n4) == ("cunet", True)
