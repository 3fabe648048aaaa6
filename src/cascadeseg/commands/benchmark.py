"""``cascadeseg benchmark``: measure every speed and memory target."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "measure speed and memory of every pipeline stage (results as JSON and Markdown)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite",
        default="all",
        choices=["data", "metrics", "inference", "training", "all"],
        help="which suite to run (default: all)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke test that runs in seconds"
    )


def run(args: argparse.Namespace) -> int:
    from cascadeseg.benchmark import SUITES, run_benchmarks, write_results
    from cascadeseg.errors import ConfigError

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    result = run_benchmarks(suites, device=args.device, quick=args.quick)
    json_path, md_path = write_results(result, args.out)
    print(f"results: {json_path} and {md_path}")
    failed = [n for n, s in result["suites"].items() if any("failed" in x for x in s["notes"])]
    return 1 if failed else 0
