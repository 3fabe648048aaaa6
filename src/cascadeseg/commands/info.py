"""``cascadeseg info MODEL|RECIPE [key=value ...]``: parameter counts, FLOPs and the layer table.

MODEL is a registered network (``two_stage``; overrides are its constructor arguments), RECIPE a
shipped recipe's name or a recipe file (``two_stage_cpu``; overrides are config keys, and a key
without a dot is a model argument: ``base_width=4`` means ``model.args.base_width=4``). A recipe
shows the network exactly as ``train`` builds it, at the recipe's crop size.

Everything runs on the ``meta`` device (shapes only), so even paper-width models at whole-brain
sizes print in about a second. Models pad their input to a multiple of their downsampling
factor; the size actually computed is printed beside the size asked for.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

import yaml

from cascadeseg.config import load_config, recipe_dirs, resolve_recipe
from cascadeseg.errors import ConfigError

HELP = "parameter count, FLOPs and layer table of a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL_OR_RECIPE",
        help="registered model name (two_stage, cunet, unet3d, unet2d, bfcn, drn) or recipe "
        "(two_stage_cpu, a YAML file)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="constructor overrides, values parsed as YAML (e.g. base_width=8 blocks=[1,1,1,2]); "
        "with a recipe, config overrides (model.args.base_width=8, data.patch_size=[64,64,64])",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        help="spatial input size for the layer table and FLOPs (default: a recipe's crop, "
        "data.patch_size; for a model, 3D 128 128 128, the paper's crop, 2D 240 240, one BraTS "
        "slice)",
    )
    parser.add_argument(
        "--flops-size",
        type=int,
        nargs="+",
        metavar="N",
        help="spatial size for the FLOP count if different (e.g. 160 192 128)",
    )
    parser.add_argument(
        "--depth", type=int, default=3, help="deepest module name level in the table"
    )
    parser.add_argument(
        "--eval-table",
        action="store_true",
        help="trace the layer table in eval mode (default: training mode, every module runs)",
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[1,2]"]`` -> ``{"a": 1, "b": [1, 2]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            out[key] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value ({exc})") from None
    return out


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def build_for_info(name: str, items: list[str]) -> tuple[Any, list[int] | None, str]:
    """The network on the ``meta`` device, the recipe's crop size (``None`` for a bare model)
    and a line saying where it came from.

    Raises:
        ConfigError: bad overrides, an unknown name (neither model nor recipe), a bad recipe.
        ModelError: arguments the model rejects.
    """
    # Loaded when the command runs, not for --help: models load torch (about 2 s).
    import torch

    from cascadeseg.models import available_models
    from cascadeseg.models.inspect import build_meta_model
    from cascadeseg.training.build import build_training_model

    if name in available_models():
        return build_meta_model(name, **parse_overrides(items)), None, f"model: {name}"
    try:
        recipe = resolve_recipe(name)
    except ConfigError:
        shipped = sorted(p.stem for folder in recipe_dirs() for p in folder.glob("*.yaml"))
        raise ConfigError(
            f"unknown model {name!r} ({', '.join(available_models())}), and no recipe file or "
            f"shipped recipe of that name ({', '.join(shipped)})"
        ) from None
    # load_config checks the form of each override and names a bad one as given.
    cfg = load_config(recipe, [_as_config_override(item) for item in items])
    with torch.device("meta"):
        model = build_training_model(cfg)
    dims = cast(int, model.spatial_dims)
    crop = [int(s) for s in cfg.data.patch_size[:dims]]
    return model, crop, f"recipe: {name} ({recipe}), model: {cfg.model.name}"


def _as_config_override(item: str) -> str:
    """``base_width=4`` -> ``model.args.base_width=4``: a key without a dot is a model argument.

    Anything else (a dotted key, no ``=``, an empty key) is passed on as given.
    """
    key, sep, _ = item.partition("=")
    return f"model.args.{item}" if sep and key and "." not in key else item


def padded_size(model: Any, size: list[int]) -> tuple[list[int], int]:
    """The spatial size the model computes on for an input of ``size``, and its multiple.

    Models zero-pad each side up to a multiple of their downsampling factor
    (``size_multiple``; :func:`cascadeseg.models.blocks.pad_to_multiple`).
    """
    multiple = int(model.size_multiple)
    return [s + (-s) % multiple for s in size], multiple


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs, not for --help: models load torch (about 2 s).
    from cascadeseg.models.inspect import count_flops, layer_table
    from cascadeseg.models.outputs import count_parameters

    for option, values in (("--input-size", args.input_size), ("--flops-size", args.flops_size)):
        if values is not None and any(v < 1 for v in values):
            raise ConfigError(f"{option} {' '.join(map(str, values))}: sizes must be positive")
    if args.depth < 1:
        raise ConfigError(f"--depth {args.depth}: must be at least 1")
    model, crop, source = build_for_info(args.model, args.overrides)
    dims = cast(int, model.spatial_dims)
    size = args.input_size or crop or ([128, 128, 128] if dims == 3 else [240, 240])
    flops_size = args.flops_size or size
    train_params = count_parameters(model, training=True)
    infer_params = count_parameters(model, training=False)
    flops_eval = count_flops(model, flops_size, training=False)
    flops_train = count_flops(model, flops_size, training=True)
    rows = layer_table(model, size, depth=args.depth, training=not args.eval_table)
    padded, multiple = padded_size(model, list(size))

    size_text = "x".join(map(str, size))
    padded_text = "x".join(map(str, padded))
    flops_padded = "x".join(map(str, padded_size(model, list(flops_size))[0]))
    print(source)
    print(f"arguments: {model.model_args}")
    print(f"spatial dims: {dims}, input channels: {model.in_channels}, output: {model.output_kind}")
    print(f"parameters (training):  {_fmt_int(train_params)}")
    print(f"parameters (inference): {_fmt_int(infer_params)}")
    print(
        f"input: {size_text}, computed at {padded_text} "
        f"(the model pads each side to a multiple of {multiple})"
    )
    print(f"FLOPs, one inference forward at {flops_padded}: {flops_eval / 1e12:.4f} TFLOP")
    print(f"FLOPs, one training-mode forward at {flops_padded}: {flops_train / 1e12:.4f} TFLOP")
    mode = "eval" if args.eval_table else "training"
    print(f"\nlayers ({mode} mode, input {model.in_channels}x{size_text}, * = training only):")
    name_w = max(len(r.name) for r in rows) + 2
    kind_w = max(len(r.kind) for r in rows)
    print(f"{'name':<{name_w}} {'type':<{kind_w}} {'parameters':>12}  output (C x spatial)")
    for r in rows:
        name = r.name + (" *" if r.training_only else "")
        print(f"{name:<{name_w}} {r.kind:<{kind_w}} {_fmt_int(r.parameters):>12}  {r.output_shape}")
    return 0
