"""``cascadeseg train CONFIG --data DIR --out RUN_DIR [--resume] [key=value ...]``.

CONFIG is a recipe file or a shipped recipe's name (``two_stage_cpu``, ``cunet_brats17``...).
Multi-GPU: ``torchrun --nproc_per_node=N -m cascadeseg train ...`` (rank 0 prints and writes).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "train a model from a recipe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="recipe YAML file or shipped recipe name (e.g. two_stage_cpu)"
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="dataset folder (any supported layout)"
    )
    parser.add_argument("--out", required=True, type=Path, help="run directory to create")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. optim.lr=3e-4 train.epochs=10 data.patch_size=[64,64,64]",
    )


def run(args: argparse.Namespace) -> int:
    from cascadeseg.config import load_config
    from cascadeseg.training.trainer import read_summary, train

    cfg = load_config(args.config, args.overrides)
    run_dir = train(cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    summary = read_summary(run_dir)
    print(run_dir)
    final = summary.get("final_val") or {}
    if "dice_mean" in final:
        print(
            "final validation Dice: "
            f"WT {final['dice_WT']:.4f}  TC {final['dice_TC']:.4f}  ET {final['dice_ET']:.4f}  "
            f"mean {final['dice_mean']:.4f}"
        )
    else:
        print("final validation Dice: n/a (no validation cases or train.val_every=0)")
    return 0
