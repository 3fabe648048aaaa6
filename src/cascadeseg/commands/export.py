"""``cascadeseg export``: the inference network to ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

from cascadeseg.errors import InputError

HELP = "export a trained model (network + output activation) to ONNX"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="RUN_DIR_OR_CKPT",
        help="a .pt checkpoint, or a run directory (its snapshots export as one averaged graph)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    parser.add_argument(
        "--example-size",
        type=int,
        nargs="+",
        help="spatial size of the tracing input (default: twice the padding multiple)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument(
        "--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison"
    )


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs, not for --help: torch and ONNX (about 2 s).
    import torch

    from cascadeseg.inference.export import export_onnx
    from cascadeseg.inference.loading import OnnxNetwork, load_models

    if args.out.exists() and not args.overwrite:
        raise InputError(f"{args.out}: exists (use --overwrite to replace)")
    members = load_models([args.model], "cpu")
    path = export_onnx(members, args.out, example_size=args.example_size, opset=args.opset)
    print(f"wrote {path} ({len(members)} member(s), opset {args.opset})")
    if not args.no_check:
        first = members[0]
        side = 2 * first.size_divisor
        x = torch.randn(1, first.in_channels, *([side] * first.spatial_dims))
        session = OnnxNetwork(path)
        with torch.inference_mode():
            ref = sum(m.probabilities(x) for m in members) / len(members)
        diff = float((ref - session(x)).abs().max())
        print(
            f"ONNX Runtime vs PyTorch on a {side}^{first.spatial_dims} input: max |diff| {diff:.2e}"
        )
        if diff > 1e-4:
            print("warning: difference above 1e-4")
            return 1
    return 0
