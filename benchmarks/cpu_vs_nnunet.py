"""CPU inference per case beside nnU-Net's default BraTS network and MONAI's SegResNet (issue 20).

One process, one machine, side by side (``cascadeseg.bench.cpu_compare``):

1. the paper's inference: ``two_stage`` at its BraTS recipe's width (random weights: speed
   does not depend on them), 8 flips of one model per case, measured from the case's files
   (``inference.predict_case``: reading, preprocessing, network, restoring, thresholding) on
   one synthetic 240x240x155 case, and one whole-brain pass for GFLOP/s, with issue 20's
   levers as rows (``--rows``; ids in ``cascadeseg.bench.cpu_rows.VARIANTS``): fp32, bf16,
   flips on the tumour box (``*-roi``; the box of the reference label plus the recipe's
   margin), ONNX Runtime fp32, OpenVINO fp32 / bf16 / int8 (NNCF), ``torch.compile`` one pass;
2. nnU-Net's default BraTS 3d_fullres network, one 128^3 patch timed, the case extrapolated
   (``nnunet``; needs ``dynamic_network_architectures`` beside the environment);
3. MONAI's SegResNet (init_filters=16), one pass x 8 (``segresnet``).

The matmul peak is the best over several sizes and repeats, measured before and after the rows.
Rows whose optional package is absent are skipped with the reason, printed and kept in the
JSON. ``--isa avx2`` emulates an AVX2-only CPU: the script starts itself again with oneDNN,
PyTorch (ATen) and MKL capped to AVX2 (``cascadeseg.bench.isa``) and checks that the cap holds.

Writes JSON (``--out``; default ``benchmarks/results/cpu-vs-nnunet.json``, with ``--isa avx2``
``cpu-vs-nnunet-avx2.json``) and the Markdown beside it (``.md``), and prints the Markdown;
``python benchmarks/write_performance.py ... RESULT.json`` renders it into
``docs/performance.md``. ``--quick`` runs every row at tiny size on one thread (seconds; the
figures mean nothing; ``tests/bench/test_cpu_vs_nnunet.py``). The default rows take about
20 minutes on a 2-core CPU with AVX512-BF16, the AVX2 rows about 10: run on a quiet machine.

    python benchmarks/cpu_vs_nnunet.py
    python benchmarks/cpu_vs_nnunet.py --isa avx2
    python benchmarks/cpu_vs_nnunet.py --rows fp32,bf16-roi --out /tmp/two-rows.json
    python benchmarks/cpu_vs_nnunet.py --quick --out /tmp/cpu-vs-nnunet.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cascadeseg.bench.cpu_compare import ROW_IDS, run_comparison, select_rows
from cascadeseg.bench.cpu_report import markdown
from cascadeseg.bench.isa import ISA_MARKER, ISAS, capped_environment

DEFAULT_OUT = {
    "native": Path("benchmarks/results/cpu-vs-nnunet.json"),
    "avx2": Path("benchmarks/results/cpu-vs-nnunet-avx2.json"),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script")
    parser.add_argument(
        "--rows",
        default=None,
        help=f"comma-separated rows, 'default' or 'all' (ids: {', '.join(ROW_IDS)})",
    )
    parser.add_argument("--isa", choices=ISAS, default="native", help="emulate an older CPU")
    parser.add_argument("--repeats", type=int, default=2, help="timed single passes")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed single passes before a row's first timed pass (none after its 8-flip case)",
    )
    return parser.parse_args(argv)


def restart_capped(isa: str, argv: Sequence[str]) -> int:
    """Run this script again in a child whose libraries are capped to ``isa``; its exit code.

    The caps are environment variables the libraries read when loaded, so they must be set
    before ``torch`` is imported: in a fresh process, not this one.
    """
    env = capped_environment(isa)
    script = str(Path(__file__).resolve())
    return subprocess.run([sys.executable, script, *argv], env=env, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.isa != os.environ.get(ISA_MARKER, "native"):
        return restart_capped(args.isa, argv)
    try:
        rows = select_rows(args.rows, args.isa)
    except ValueError as exc:
        print(f"cpu_vs_nnunet.py: --rows: {exc}", file=sys.stderr)
        return 2
    result = run_comparison(
        args.out or DEFAULT_OUT[args.isa],
        rows=rows,
        quick=args.quick,
        repeats=max(1, args.repeats),
        warmup=max(0, args.warmup),
        isa=args.isa,
        command=("python benchmarks/cpu_vs_nnunet.py " + " ".join(argv)).strip(),
    )
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
