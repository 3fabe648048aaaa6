"""Evaluation: BraTS metrics, per-folder evaluation, plots, comparisons and HTML reports.

* :mod:`~cascadeseg.evaluation.metrics`: pure functions (Dice, sensitivity, specificity, HD95 as
  the official BraTS evaluation computes it), the list of metrics every output iterates
  (:class:`MetricSpec`, :data:`METRICS`, :func:`register_metric`) and :func:`case_metrics`.
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
    METRICS,
    MetricSpec,
    case_metrics,
    dice,
    hd95,
    register_metric,
    sensitivity,
    specificity,
    unregister_metric,
)

__all__ = [
    "BRATS_EMPTY_HD95",
    "METRICS",
    "METRIC_NAMES",
    "EvaluationResult",
    "MetricSpec",
    "case_metrics",
    "dice",
    "evaluate",
    "hd95",
    "load_evaluation",
    "register_metric",
    "sensitivity",
    "specificity",
    "unregister_metric",
]
