"""Stage 2 of a two-stage run at inference with one decoder or both averaged: predictions of each.

The same trained weights predict every case of ``--input`` twice, as ``cascadeseg predict`` does
with the run's recipe settings: once with the transposed-convolution decoder alone (the paper:
``<out>/one``) and once with the mean of both decoders' probabilities (``<out>/both``,
``model.args.average_decoders``). ``cascadeseg evaluate`` then scores each folder
(docs/results-decoder-average.md).

    python experiments/decoder_average.py --model runs/seed0 --input no_et --out preds/seed0-no_et
    cascadeseg evaluate --pred preds/seed0-no_et/one --ref no_et --out eval/seed0-no_et-one
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cascadeseg.inference import load_models, options_from_recipe, predict

#: Output folder name -> ``average_decoders``.
SETTINGS = {"one": False, "both": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a two_stage run folder or .pt")
    p.add_argument("--input", type=Path, required=True, help="held-out cases")
    p.add_argument("--out", type=Path, required=True, help="folder for one/ and both/")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="8-flip TTA (default: the recipe's)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = load_models([args.model])
    if not all(hasattr(m.network, "average_decoders") for m in models):
        print(f"{args.model}: not a two_stage model (no average_decoders)", file=sys.stderr)
        return 2
    failed = 0
    for name, average in SETTINGS.items():
        for member in models:
            network: Any = member.network
            network.average_decoders = average  # a switch of forward, not a weight
        options = options_from_recipe(models, {"tta": args.tta}, overwrite=True, progress=False)
        results = predict(models, args.input, args.out / name, options)
        failed += sum(r.status != "ok" for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
