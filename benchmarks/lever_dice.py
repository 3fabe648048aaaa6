"""Held-out Dice of issue 20's speed levers on a trained model (``cascadeseg.bench.lever_dice``).

For a run folder (or checkpoints) and a data folder with labels, per case and in the mean:
Dice WT / TC / ET of fp32 on the whole volume (the baseline), bf16, flips on the tumour box in
fp32 and bf16, ONNX Runtime, OpenVINO fp32 / bf16 / int8 (when installed), and each one's
difference from the baseline; the tumour box's fraction of the volume and whether every pass
agrees with the first outside the box. Predictions on the preprocessed grid, before
post-processing, on the CPU. int8 is calibrated on crops of ``--calibration-data`` (default: the
evaluated cases themselves; give the training folder to keep them apart).

Writes JSON (``--out``, default ``benchmarks/results/lever-dice.json``; one row per case and a
summary) and the summary as Markdown beside it (``.md``), and prints the summary.

    python benchmarks/lever_dice.py --model demo_out/run --data demo_out/data/test \\
        --calibration-data demo_out/data/train
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cascadeseg.bench.cpu_compare import versions
from cascadeseg.bench.isa import cpu_identity
from cascadeseg.bench.lever_dice import (
    DEFAULT_LEVERS,
    LEVERS,
    calibration_set,
    lever_members,
    lever_options,
    lever_skip_reason,
    markdown,
    measure_case,
    summarise,
)
from cascadeseg.bench.timing import machine_info
from cascadeseg.data.layouts import discover_cases
from cascadeseg.data.layouts.reading import read_case
from cascadeseg.data.preprocess import preprocess_case
from cascadeseg.inference.loading import load_models
from cascadeseg.inference.options import options_from_recipe


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", required=True, help="run folder(s) or checkpoints")
    parser.add_argument("--data", required=True, help="data folder with labels (any layout)")
    parser.add_argument("--out", default="benchmarks/results/lever-dice.json")
    parser.add_argument("--cases", type=int, default=None, help="first N cases only")
    parser.add_argument(
        "--levers",
        default=",".join(DEFAULT_LEVERS),
        help=f"comma-separated, the baseline fp32 first (known: {', '.join(LEVERS)})",
    )
    parser.add_argument("--calibration-data", default=None, help="int8 calibration cases")
    parser.add_argument("--calibration-cases", type=int, default=4)
    parser.add_argument(
        "--no-agreement", action="store_true", help="skip the 8 extra passes per case"
    )
    return parser.parse_args(argv)


def build_levers(
    args: argparse.Namespace, models: list[Any], result: dict[str, Any]
) -> dict[str, Any]:
    """``{lever: (members, options)}`` of the levers that can run; the others in ``skipped``."""
    base = options_from_recipe(models, {"tta": True}, device="cpu", progress=False)
    wanted = [name.strip() for name in args.levers.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in LEVERS]
    if unknown:
        raise SystemExit(f"lever_dice.py: unknown lever(s) {', '.join(unknown)}")
    calibration = None
    if "openvino-int8" in wanted and lever_skip_reason(LEVERS["openvino-int8"]) is None:
        refs = discover_cases(args.calibration_data or args.data)[: args.calibration_cases]
        pres = [preprocess_case(read_case(r), models[0].preprocess) for r in refs]
        calibration = calibration_set(pres, models)
        result["calibration"] = {"cases": [r.case_id for r in refs], "crops": len(calibration)}
    built = {}
    for name in wanted:
        lever = LEVERS[name]
        reason = lever_skip_reason(lever)
        if reason is None:
            try:
                built[name] = (
                    lever_members(models, lever, calibration),
                    lever_options(base, lever),
                )
            except Exception as exc:  # OpenVINO/NNCF raise their own types
                reason = f"could not build the network ({type(exc).__name__}: {exc})"
        if reason is not None:
            result["skipped"].append({"id": name, "reason": reason})
            print(f"{name}: skipped: {reason}", flush=True)
    return built


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu")
    models = load_models(args.model, device)
    result: dict[str, Any] = {
        "kind": "lever-dice",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/lever_dice.py " + " ".join(argv or sys.argv[1:]),
        "models": [str(m.source) for m in models],
        "machine": machine_info("cpu"),
        "cpu_identity": cpu_identity(),
        "versions": versions(),
        "skipped": [],
    }
    built = build_levers(args, models, result)
    rows = []
    for ref in discover_cases(args.data)[: args.cases]:
        pre = preprocess_case(read_case(ref), models[0].preprocess)
        rows.append(measure_case(pre, built, device, agreement=not args.no_agreement))
        print(
            json.dumps(
                {
                    "case_id": pre.case_id,
                    **{k: v.get("dice") for k, v in rows[-1]["levers"].items()},
                }
            ),
            flush=True,
        )
    result["summary"] = summarise(rows, list(built))
    result["cases"] = rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
