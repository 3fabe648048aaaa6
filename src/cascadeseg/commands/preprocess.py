"""``cascadeseg preprocess DATA [--cache DIR] [--spacing X Y Z] [--n4] [--workers N] ...``.

Fills the preprocessing cache that ``cascadeseg train`` reads (``<DATA>/.cascadeseg_cache`` by
default), so the first epoch does not wait on NIfTI decoding. Up-to-date entries are reused;
stale or corrupt ones are rebuilt. Exit status 1 when some cases fail (each is listed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cascadeseg.commands._options import (
    add_dataset_layout,
    add_label_convention,
    add_no_progress,
    add_workers,
)
from cascadeseg.data.layouts import discover_cases

HELP = "preprocess a dataset into the cache used by training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="dataset folder (any supported layout)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache folder (default: DATA/.cascadeseg_cache; for a read-only DATA a folder "
        "under $XDG_CACHE_HOME/cascadeseg or ~/.cache/cascadeseg, printed)",
    )
    add_dataset_layout(parser, "dataset layout (default: detected)")
    add_label_convention(
        parser, "--label-convention", "label convention of the seg files (default: the layout's)"
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        default=None,
        help="resample to this voxel size in mm (RAS axes; default: keep the source spacing)",
    )
    parser.add_argument("--n4", action="store_true", help="N4 bias-field correction (SimpleITK)")
    parser.add_argument(
        "--n4-shrink",
        type=int,
        default=4,
        help="N4 fits the bias field on the image shrunk by this factor (default 4; 8 is faster)",
    )
    parser.add_argument(
        "--crop-margin", type=int, default=4, help="voxels kept around the brain (default 4)"
    )
    add_workers(parser, default=2, help="worker processes (default 2)")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs, not for --help: scipy and nibabel, about 1 s.
    from cascadeseg.data.cache import PreprocessCache, resolve_cache_dir
    from cascadeseg.data.preprocess import PreprocessConfig

    cfg = PreprocessConfig(
        target_spacing=None if args.spacing is None else tuple(args.spacing),
        n4=args.n4,
        n4_shrink_factor=args.n4_shrink,
        crop_margin=args.crop_margin,
    )
    refs = discover_cases(args.data, layout=args.layout, label_convention=args.label_convention)
    cache = PreprocessCache(resolve_cache_dir(args.data, args.cache), cfg)
    result = cache.warm(refs, workers=args.workers, progress=not args.no_progress)
    print(
        f"{len(result.built)} built, {len(result.reused)} up to date, "
        f"{len(result.failed)} failed -> {cache.folder}"
    )
    for case_id, message in sorted(result.failed.items()):
        print(f"  {case_id}: {message}", file=sys.stderr)
    return 1 if result.failed else 0
