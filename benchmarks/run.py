"""Run the benchmark suite: ``python benchmarks/run.py --suite all [--device cuda] [--quick]``.

The same as ``cascadeseg benchmark`` (see ``benchmarks/README.md``): the same arguments, and
:func:`cascadeseg.bench.run_benchmarks` writes ``--out`` (JSON) and its ``.md``;
``--render RESULTS_JSON`` prints the ``docs/performance.md`` section of earlier results.
"""

from __future__ import annotations

import argparse
import sys

from cascadeseg.commands import benchmark as command
from cascadeseg.errors import CascadesegError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=command.HELP)
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return command.run(args, program="python benchmarks/run.py")
    except CascadesegError as exc:
        print(f"benchmarks/run.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
