"""``cascadeseg benchmark``: measure every speed and memory target."""

from __future__ import annotations

import argparse
from pathlib import Path

from cascadeseg.errors import ConfigError

HELP = "measure speed and memory of every pipeline stage (results as JSON and Markdown)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite",
        default="all",
        choices=["data", "metrics", "inference", "training", "gpu", "all"],
        help="which suite to run; all = data, metrics, inference, training; gpu = the GPU "
        "check of benchmarks/gpu_check.sh (default: all)",
    )
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="device to measure on"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results.json"), help="results JSON to write"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke test that runs in seconds"
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="print the docs/performance.md section of an existing results JSON; measure nothing",
    )


def command_line(args: argparse.Namespace, program: str = "cascadeseg benchmark") -> str:
    """The canonical command line of ``args`` (recorded with the results and in the docs)."""
    line = f"{program} --suite {args.suite} --device {args.device} --out {args.out}"
    return line + (" --quick" if args.quick else "")


def run(args: argparse.Namespace, program: str = "cascadeseg benchmark") -> int:
    """Run the suites, write ``--out`` (JSON) and its ``.md``; exit 1 if a suite failed."""
    # Loaded when the command runs, not for --help: the suites load torch (about 3 s).
    from cascadeseg.bench import (
        SUITES,
        load_results,
        render_performance_section,
        run_benchmarks,
        write_results,
    )

    if getattr(args, "render", None) is not None:
        print(render_performance_section(load_results(args.render)))
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    result = run_benchmarks(
        suites, device=args.device, quick=args.quick, command=command_line(args, program)
    )
    json_path, md_path = write_results(result, args.out)
    print(f"results: {json_path} and {md_path}")
    failed = [n for n, s in result["suites"].items() if any("failed" in x for x in s["notes"])]
    return 1 if failed else 0
