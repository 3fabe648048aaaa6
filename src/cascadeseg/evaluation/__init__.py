"""Evaluation: BraTS metrics, reports, plots."""
