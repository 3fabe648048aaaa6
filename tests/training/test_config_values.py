"""Invalid config values are refused when the config is built, naming the key."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from cascadeseg.config import RULES, Config, apply_overrides, from_dict, load_config, to_dict
from cascadeseg.errors import ConfigError, ModelError
from cascadeseg.training.build import build_training_model

BAD_VALUES = [
    ("optim.lr=nan", "optim.lr must be a finite positive number, got nan"),
    ("optim.lr=-1e-3", "optim.lr must be a finite positive number"),
    ("optim.lr=.inf", "optim.lr must be a finite positive number, got inf"),
    ("optim.weight_decay=-1", "optim.weight_decay must be a finite number >= 0"),
    ("optim.momentum=1.5", "optim.momentum must be a number in [0, 1)"),
    ("optim.step_gamma=0", "optim.step_gamma must be a factor in (0, 1]"),
    ("optim.schedule=cosine", "optim.schedule must be one of poly, step, constant"),
    ("optim.grad_clip=0", "optim.grad_clip must be a finite positive number or null"),
    ("model.args.base_width=0", "model.args.base_width must be a positive integer, got 0"),
    ("model.args.norm_groups=-2", "model.args.norm_groups must be a positive integer"),
    ("model.args.blocks=[1,0,2]", "model.args.blocks must be a list of positive integers"),
    ("model.args.dropout=1.5", "model.args.dropout must be a probability in [0, 1]"),
    ("model.args.dropout=.nan", "model.args.dropout must be finite"),
    ("data.patch_size=[0,64,64]", "data.patch_size must be a list of positive integers"),
    ("data.patch_size=[64,64,64,64]", "data.patch_size must be a list of positive integers"),
    ("data.patch_size=[-8,64]", "data.patch_size"),
    ("data.target_spacing=[1,0,1]", "data.target_spacing must be a list of 3 finite positive"),
    ("data.foreground_prob=1.2", "data.foreground_prob must be a probability in [0, 1]"),
    ("data.foreground_prob=-0.1", "data.foreground_prob must be a probability in [0, 1]"),
    ("data.drop_empty_slices=2", "data.drop_empty_slices must be a probability"),
    ("data.bias_field_prob=.nan", "data.bias_field_prob must be a probability"),
    ("data.crop_overhang=0.7", "data.crop_overhang must be a number in [0, 0.5]"),
    ("data.bias_field_strength=[0.3,0.1]", "data.bias_field_strength must be [low, high]"),
    ("data.bias_field_groups=[[1,2],[2,3]]", "data.bias_field_groups must be a list of lists"),
    ("data.bias_field_groups=[[0,4]]", "data.bias_field_groups must be a list of lists"),
    ("data.enhancement_erase_prob=1.5", "data.enhancement_erase_prob must be a probability"),
    ("loss.region_weights=[0,0,0]", "loss.region_weights must be a list of 3 numbers >= 0"),
    ("loss.region_weights=[1,-2,1]", "loss.region_weights must be a list of 3 numbers >= 0"),
    ("loss.region_weights=[1,2]", "loss.region_weights: expected 3 values"),
    ("data.n4_channels=[0,4]", "data.n4_channels must be a list of channel numbers 0-3"),
    ("data.n4_iterations=[]", "data.n4_iterations must be a list of positive integers"),
    ("data.num_workers=-1", "data.num_workers must be an integer >= 0"),
    ("data.folds=1", "data.folds must be an integer >= 2"),
    ("data.fold=5", "data.fold must be in [0, data.folds)"),
    ("train.batch_size=0", "train.batch_size must be a positive integer, got 0"),
    ("train.epochs=0", "train.epochs must be a positive integer, got 0"),
    ("train.iters_per_epoch=0", "train.iters_per_epoch must be a positive integer or null"),
    ("train.max_minutes=-5", "train.max_minutes must be a finite positive number or null"),
    ("train.max_minutes=0", "train.max_minutes must be a finite positive number or null"),
    ("train.val_cases=0", "train.val_cases must be a positive integer or null"),
    ("train.stage1_first=1", "train.stage1_first must be a number in [0, 1)"),
    ("train.precision=fp8", "train.precision must be one of fp32, bf16, fp16, auto"),
    ("train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N"),
    ("inference.threshold=1.5", "inference.threshold must be a probability in [0, 1]"),
    ("inference.overlap=1", "inference.overlap must be a number in [0, 1)"),
    ("inference.et_min_voxels=-1", "inference.et_min_voxels must be an integer >= 0"),
    ("loss.dice_eps=-1e-5", "loss.dice_eps must be a finite number >= 0"),
    ("loss.aux_decay_every=0", "loss.aux_decay_every must be a positive integer"),
    ("seed=-1", "seed must be an integer >= 0"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES)
def test_bad_value_is_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        apply_overrides(Config(), [override])
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("override", "message"), BAD_VALUES[:12])
def test_bad_value_in_a_recipe_file_is_refused(
    override: str, message: str, tmp_path: typing.Any
) -> None:
    key, value = override.split("=", 1)
    section, _, name = key.partition(".")
    path = tmp_path / "recipe.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n" if name else f"{key}: {value}\n")
    if "." in name:  # model.args.x
        parent, child = name.split(".")
        path.write_text(f"{section}:\n  {parent}:\n    {child}: {value}\n")
    with pytest.raises(ConfigError, match=message.split(" must")[0].replace(".", r"\.")):
        load_config(path)


def test_dataclasses_replace_is_checked_too() -> None:
    cfg = Config()
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=-3))


def test_checkpoint_config_with_bad_value_is_refused() -> None:
    tree = to_dict(Config())
    tree["optim"]["lr"] = math.nan
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        from_dict(tree, Config)


def _numeric_fields(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _numeric_fields(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            continue
        text = str(tp)
        if tp in (int, float) or "int" in text or "float" in text:
            keys.append(prefix + f.name)
    return keys


def test_every_numeric_setting_has_a_rule() -> None:
    # A new number in the config cannot slip in unchecked.
    missing = [key for key in _numeric_fields(Config) if key not in RULES]
    assert missing == []


@pytest.mark.parametrize("key", sorted(RULES))
def test_every_rule_accepts_the_default(key: str) -> None:
    what, test = RULES[key]
    node: typing.Any = Config()
    for part in key.split("."):
        node = getattr(node, part)
    assert test(node), f"{key}: default {node!r} is not {what}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{norm_groups: 3}", "model.args: model 'unet3d' rejects norm_groups=3"),
        ("{base_width: true}", "model.args: model 'unet3d': base_width must be an integer"),
        ("{in_channels: [4]}", "in_channels must be an integer"),
        ("{widths: 8}", "has no argument(s) widths"),
    ],
)
def test_model_args_rejected_at_build_time_name_model_args(args: str, message: str) -> None:
    cfg = apply_overrides(Config(), ["model.name=unet3d", f"model.args={args}"])
    with pytest.raises(ConfigError) as exc:
        build_training_model(cfg)
    assert message in str(exc.value)


def test_registry_refuses_empty_layers_and_non_finite_numbers() -> None:
    from cascadeseg.models import build_model

    with pytest.raises(ModelError, match="dropout must be finite"):
        build_model("two_stage", dropout="nan")
    with pytest.raises(ModelError, match="out_channels must be a positive integer"):
        build_model("unet3d", out_channels=0)
    with pytest.raises(ModelError, match="checkpointing must be true or false"):
        build_model("two_stage", checkpointing="yes")
    assert build_model("two_stage", dropout="0.1", base_width=4, norm_groups=2).model_args[
        "dropout"
    ] == pytest.approx(0.1)
