"""``cascadeseg info MODEL [key=value ...]``: parameter counts, FLOPs and the layer table.

Everything runs on the ``meta`` device (shapes only), so even paper-width models at whole-brain
sizes print in about a second.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

import yaml

from cascadeseg.errors import ConfigError

HELP = "parameter count, FLOPs and layer table of a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="registered model name (two_stage, cunet, unet3d, unet2d, bfcn, drn)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="constructor overrides, values parsed as YAML (e.g. base_width=8 blocks=[1,1,1,2])",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        help="spatial input size for the layer table and FLOPs (3D default 128 128 128, the "
        "paper's crop; 2D default 240 240, one BraTS slice)",
    )
    parser.add_argument(
        "--flops-size",
        type=int,
        nargs="+",
        metavar="N",
        help="spatial size for the FLOP count if different (e.g. 160 192 128)",
    )
    parser.add_argument(
        "--depth", type=int, default=3, help="deepest module name level in the table (3)"
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


def run(args: argparse.Namespace) -> int:
    from cascadeseg.models.bench import build_meta_model, count_flops, layer_table
    from cascadeseg.models.outputs import count_parameters

    overrides = parse_overrides(args.overrides)
    model = build_meta_model(args.model, **overrides)
    dims = cast(int, model.spatial_dims)
    size = args.input_size or ([128, 128, 128] if dims == 3 else [240, 240])
    flops_size = args.flops_size or size
    train_params = count_parameters(model, training=True)
    infer_params = count_parameters(model, training=False)
    flops_eval = count_flops(model, flops_size, training=False)
    flops_train = count_flops(model, flops_size, training=True)
    rows = layer_table(model, size, depth=args.depth, training=not args.eval_table)

    size_text = "x".join(map(str, size))
    flops_text = "x".join(map(str, flops_size))
    print(f"model: {args.model}")
    print(f"arguments: {model.model_args}")
    print(f"spatial dims: {dims}, input channels: {model.in_channels}, output: {model.output_kind}")
    print(f"parameters (training):  {_fmt_int(train_params)}")
    print(f"parameters (inference): {_fmt_int(infer_params)}")
    print(f"FLOPs, one inference forward at {flops_text}: {flops_eval / 1e12:.4f} TFLOP")
    print(f"FLOPs, one training-mode forward at {flops_text}: {flops_train / 1e12:.4f} TFLOP")
    mode = "eval" if args.eval_table else "training"
    print(f"\nlayers ({mode} mode, input {model.in_channels}x{size_text}, * = training only):")
    name_w = max(len(r.name) for r in rows) + 2
    kind_w = max(len(r.kind) for r in rows)
    print(f"{'name':<{name_w}} {'type':<{kind_w}} {'parameters':>12}  output (C x spatial)")
    for r in rows:
        name = r.name + (" *" if r.training_only else "")
        print(f"{name:<{name_w}} {r.kind:<{kind_w}} {_fmt_int(r.parameters):>12}  {r.output_shape}")
    return 0
