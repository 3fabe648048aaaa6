"""``cascadeseg train CONFIG --data DIR --out RUN_DIR [--minutes M] [--resume] [key=value ...]``.

CONFIG is a recipe file or a shipped recipe's name (``two_stage_cpu``, ``cunet_brats17``...).
Multi-GPU: ``torchrun --nproc_per_node=N -m cascadeseg train ...`` (rank 0 prints and writes).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any

from cascadeseg.config import load_config, resolve_recipe

HELP = "train a model from a recipe"
#: The folder this command writes, locked while it runs (see cascadeseg.cli).
OUTPUT_FOLDER = "out"


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
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="preprocessing cache folder (data.cache_dir; default: DATA/.cascadeseg_cache, or a "
        "folder under ~/.cache/cascadeseg when DATA is read-only)",
    )
    parser.add_argument(
        "--minutes",
        type=_positive_minutes,
        default=None,
        metavar="M",
        help="training time budget in minutes (sets train.max_minutes, and "
        "train.time_schedule=true so the learning-rate decay ends with the budget, unless "
        "given; default: the recipe's)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (one line per epoch is printed either way)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. optim.lr=3e-4 train.epochs=10 data.patch_size=[64,64,64]",
    )
    _collect_trailing_overrides(parser)


def _positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text!r}")
    return value


def budget_overrides(minutes: float | None, overrides: list[str]) -> list[str]:
    """``overrides`` plus what ``--minutes`` sets (after them, so the flag wins)."""
    if minutes is None:
        return list(overrides)
    extra = [f"train.max_minutes={minutes}"]
    if not any(o.split("=", 1)[0] == "train.time_schedule" for o in overrides):
        extra.append("train.time_schedule=true")
    return [*overrides, *extra]


def _collect_trailing_overrides(parser: argparse.ArgumentParser) -> None:
    """Accept ``key=value`` overrides after the options too (``... --out RUN optim.lr=1e-3``).

    argparse matches positionals only in the run before the first option, so trailing
    overrides would be "unrecognized"; this wraps the subparser's ``parse_known_args`` (which
    the main parser calls) to move them into ``args.overrides``.
    """
    original = parser.parse_known_args

    def parse_known_args(args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = original(args, namespace)
        trailing = [a for a in extras if "=" in a and not a.startswith("-")]
        namespace.overrides = list(getattr(namespace, "overrides", None) or []) + trailing
        return namespace, [a for a in extras if a not in trailing]

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs, not for --help: training loads torch (about 2 s).
    from cascadeseg.training.trainer import read_summary, train

    cfg = load_config(args.config, budget_overrides(args.minutes, args.overrides))
    if args.cache is not None:
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, cache_dir=str(args.cache))
        )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"recipe: {args.config} ({resolve_recipe(args.config)})", file=sys.stderr)
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
