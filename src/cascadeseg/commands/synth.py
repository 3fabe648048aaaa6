"""``cascadeseg synth OUT --cases N --seed S --layout {brats2021,brats2023,msd} [--workers W]
[--multifocal-prob P --max-lesions N]``.

Writes synthetic BraTS-geometry cases (240 x 240 x 155, 1 mm, int16 images) built on the MNI152
anatomy, with their segmentations, in the chosen dataset layout; see :mod:`cascadeseg.data.synth`.
Case ids follow the layout's pattern but are never real ones (``SynthBraTS2021_00000``,
``BraTS-SYN-00000-000``, ``SYNTH_000``). Nothing is written when any of the files exists, unless
``--overwrite`` is given (exit 2, naming the first).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from cascadeseg.commands._options import (
    add_multifocal_prob,
    add_no_progress,
    add_synth_scale,
    add_workers,
)
from cascadeseg.errors import ConfigError

HELP = "write synthetic BraTS-like cases (MNI152 anatomy, glioma with edema, ET, necrosis)"
#: The folder this command writes, locked while it runs (see cascadeseg.cli).
OUTPUT_FOLDER = "out"

LAYOUTS = ("brats2021", "brats2023", "msd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="dataset folder to write (created)")
    parser.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="brats2021", help="dataset layout (default brats2021)"
    )
    add_workers(parser, default=1, help="parallel processes (default 1)")
    add_synth_scale(
        parser, "grid scale; 1 = BraTS 240x240x155 at 1 mm (smaller values: quick tests only)"
    )
    parser.add_argument(
        "--bias-strength",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="range of the standard deviation of each modality's log bias field "
        "(default 0.02 0.1: up to about BrainWeb's strongest, 40%% INU; 0 0: no field)",
    )
    parser.add_argument(
        "--no-et-prob",
        type=float,
        default=None,
        metavar="P",
        help="share of cases without enhancing tumour, their core non-enhancing (lower-grade "
        "glioma-like; default 0.15; 1: every case, e.g. a test set of such cases)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files that exist (default: refuse, writing nothing, if any does)",
    )
    add_multifocal_prob(
        parser,
        "share of multi-focal cases: 2-3 tumours plus satellite nodules near them, some "
        "within the BraTS 2023 3-voxel dilation reach, some farther (default 0: off)",
    )
    parser.add_argument(
        "--max-lesions",
        type=int,
        default=None,
        metavar="N",
        help="most tumour foci (tumours + satellites) of a multi-focal case (default 6)",
    )
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs, not for --help: scipy and the template, about 1.3 s.
    from cascadeseg.data.synth import SynthConfig, synthesize_dataset

    if args.cases < 1:
        raise ConfigError(f"--cases must be at least 1 (got {args.cases})")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    if not 0.05 <= args.scale <= 1.0:
        raise ConfigError(f"--scale must lie in [0.05, 1] (got {args.scale})")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"{args.out}: exists and is not a folder")
    config = SynthConfig(shape_scale=args.scale)
    if args.bias_strength is not None:
        low, high = args.bias_strength
        if not 0.0 <= low <= high:
            raise ConfigError(
                f"--bias-strength must be LOW HIGH with 0 <= LOW <= HIGH (got {low} {high})"
            )
        config = replace(config, bias_strength=(low, high))
    if args.no_et_prob is not None:
        if not 0.0 <= args.no_et_prob <= 1.0:
            raise ConfigError(f"--no-et-prob must lie in [0, 1] (got {args.no_et_prob})")
        config = replace(config, p_no_et=args.no_et_prob)
    config = _multifocal_options(config, args.multifocal_prob, args.max_lesions)
    paths = synthesize_dataset(
        args.out,
        args.cases,
        seed=args.seed,
        layout=args.layout,
        workers=args.workers,
        progress=not args.no_progress,
        config=config,
        overwrite=args.overwrite,
    )
    shape = "x".join(str(s) for s in config.shape)
    print(
        f"wrote {len(paths)} synthetic cases ({args.layout} layout, {shape} voxels of "
        f"{config.voxel_mm:g} mm, seed {args.seed}) to {args.out.resolve()}"
    )
    return 0


def _multifocal_options(config: Any, probability: float, max_lesions: int | None) -> Any:
    """``config`` with ``--multifocal-prob`` and ``--max-lesions`` (checked) applied."""
    if not 0.0 <= probability <= 1.0:
        raise ConfigError(f"--multifocal-prob must lie in [0, 1] (got {probability})")
    config = replace(config, multifocal_prob=probability)
    if max_lesions is not None:
        if max_lesions < 2:
            raise ConfigError(f"--max-lesions must be at least 2 (got {max_lesions})")
        config = replace(config, max_lesions=max_lesions)
    return config
