"""``cascadeseg demo``: synthetic data -> training -> TTA prediction -> evaluation -> report."""

from __future__ import annotations

import argparse
from pathlib import Path

from cascadeseg import demo
from cascadeseg.commands._options import add_multifocal_prob, add_synth_scale, add_workers
from cascadeseg.demo import DEMO_CASES, DEMO_DEADLINE, DEMO_MODELS, DEMO_TEST_CASES

HELP = "run the whole pipeline on synthetic data (no download, no GPU needed)"
#: The folder this command writes, locked while it runs (see cascadeseg.cli).
OUTPUT_FOLDER = "out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget (minutes), at most (default: all the --deadline leaves; 7 "
        "without a deadline)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=DEMO_DEADLINE,
        metavar="MINUTES",
        help="the whole demo's wall-clock limit: training gets what data making, prediction "
        "and evaluation (estimated before training) leave, at most --minutes; 0: none "
        "(default %(default)g)",
    )
    parser.add_argument(
        "--cases", type=int, default=DEMO_CASES, help="synthetic cases, training + held out"
    )
    parser.add_argument("--test-cases", type=int, default=DEMO_TEST_CASES, help="held-out cases")
    parser.add_argument(
        "--model",
        default="two_stage",
        choices=DEMO_MODELS,
        help="model to train with its small CPU recipe",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    add_workers(parser, default=2, help="parallel processes")
    add_synth_scale(
        parser, "grid scale of the synthetic cases (1: BraTS 240x240x155 at 1 mm; 0.25: smoke run)"
    )
    add_multifocal_prob(
        parser, "share of multi-focal synthetic cases (several tumours, satellites; default 0)"
    )
    parser.add_argument(
        "--missing",
        action="append",
        default=None,
        metavar="SEQ",
        help="train the model's missing-sequence recipe (<model>_missing_cpu, two_stage only) and "
        "finally predict the first held-out case again without sequence SEQ (flair, t1, t1ce, "
        "t2; repeat or comma-separate), its Dice beside that with all four (default: none)",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")


def run(args: argparse.Namespace) -> int:
    result = demo.run_demo(
        args.out,
        minutes=args.minutes,
        cases=args.cases,
        test_cases=args.test_cases,
        model=args.model,
        seed=args.seed,
        workers=args.workers,
        synth_scale=args.scale,
        overrides=tuple(args.overrides),
        multifocal_prob=args.multifocal_prob,
        missing=tuple(args.missing or ()),
        deadline=args.deadline or None,
    )
    # Missing or failed held-out cases (a prediction that failed is scored as missing) are no
    # success: the evaluation's exit code (0 all evaluated, 1 otherwise) is the demo's.
    code = int(result.summary.get("exit_code", 0))
    if code:
        status = result.summary.get("status", "incomplete")
        print(f"demo: the evaluation is {status}: see {result.report}")
    return code
