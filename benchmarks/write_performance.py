"""Write docs/performance.md from benchmark result files (one section per device).

Usage: python benchmarks/write_performance.py RESULT.json [RESULT.json ...]

Results of separate suite runs on the same device are merged into one section (each suite keeps
the machine line and peak of its own run, so contention or a different day shows). A result of
``benchmarks/cpu_vs_nnunet.py`` (``"kind": "cpu-vs-nnunet"``) becomes a section of its own: its
rows, the matmul peak and its samples, the ISA check, the skipped rows and the targets of issue
20 judged from the rows (``cascadeseg.bench.cpu_report``); one of ``benchmarks/lever_dice.py``
(``"kind": "lever-dice"``) the levers' held-out Dice and which stay within issue 20's 0.005
(``cascadeseg.bench.lever_dice.render_section``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cascadeseg.bench import render_performance_section
from cascadeseg.bench.cpu_report import KIND, render_section
from cascadeseg.bench.lever_dice import render_section as render_lever_dice

HEADER = """# Performance

Measured speed and memory of every pipeline stage, each figure beside the target an issue sets.
Every section names the machine, the date and the exact command; the tables are rendered from the
JSON the command wrote (`benchmarks/results/`), by `python benchmarks/write_performance.py`.
How to rerun and read them: `benchmarks/README.md`.

"""


def main(paths: list[str]) -> int:
    sections = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        if result.get("kind") == KIND:
            sections.append(render_section(result))
        elif result.get("kind") == "lever-dice":
            sections.append(render_lever_dice(result))
        elif "rows" in result and "suites" not in result:
            print(f"{path}: written by an older cpu_vs_nnunet.py: rerun it", file=sys.stderr)
            return 2
        else:
            sections.append(render_performance_section(result))
    notes = Path("benchmarks/performance_notes.md")
    body = HEADER + (notes.read_text() + "\n" if notes.is_file() else "") + "\n".join(sections)
    Path("docs/performance.md").write_text(body)
    print("wrote docs/performance.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
