"""Evaluation: BraTS metrics, per-folder evaluation, plots, comparisons and HTML reports.

* :mod:`~cascadeseg.evaluation.metrics`: pure functions (Dice, sensitivity, specificity, HD95 as
  the official BraTS evaluation computes it) and :func:`case_metrics` (the 12 metrics of a case).
* :mod:`~cascadeseg.evaluation.evaluate`: :func:`evaluate` a prediction folder against references
  (``metrics.csv``, ``summary.json``).
* :mod:`~cascadeseg.evaluation.report`, :mod:`~cascadeseg.evaluation.plots`,
  :mod:`~cascadeseg.evaluation.compare`: ``report.html``, box plots, overlays, method tables.

Definitions: ``docs/metrics.md``. Plotting modules import matplotlib, so they are not imported
here.
"""

from __future__ import annotations

from cascadeseg.evaluation.evaluate import EvaluationResult, evaluate, load_evaluation
from cascadeseg.evaluation.metrics import (
    BRATS_EMPTY_HD95,
    METRIC_NAMES,
    case_metrics,
    dice,
    hd95,
    sensitivity,
    specificity,
)

__all__ = [
    "BRATS_EMPTY_HD95",
    "METRIC_NAMES",
    "EvaluationResult",
    "case_metrics",
    "dice",
    "evaluate",
    "hd95",
    "load_evaluation",
    "sensitivity",
    "specificity",
]
