"""evaluate() as the evaluation tests call it: one worker, no progress bar, no printed table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cascadeseg.evaluation.evaluate import EvaluationResult, evaluate


def evaluate_quietly(pred: Path, ref: Path, out: Path, **options: Any) -> EvaluationResult:
    """:func:`evaluate` of ``pred`` against ``ref`` into ``out``; ``options`` override the quiet
    defaults ``workers=1, progress=False, print_table=False``."""
    options = {"workers": 1, "progress": False, "print_table": False, **options}
    return evaluate(pred, ref, out, **options)
