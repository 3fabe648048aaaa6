"""Inference: predictor, flip TTA, sliding window, ensembles, post-processing, export.

Typical use::

    from cascadeseg.inference import PredictOptions, load_models, options_from_recipe, predict

    models = load_models(["runs/two_stage_fold0"], device="cpu")
    results = predict(models, "data/BraTS2021_val", "predictions", PredictOptions(tta=True))
    # or with the settings stored in the models' recipe (what `cascadeseg predict` does):
    options = options_from_recipe(models, {"tta": None}, device="cpu")
"""

from __future__ import annotations

from cascadeseg.inference.ensemble import LoadedModel, average_probabilities, load_models
from cascadeseg.inference.postprocess import (
    fuse_brain_mask,
    postprocess_et,
    tune_et_threshold,
    tune_postprocess,
)
from cascadeseg.inference.predictor import (
    CaseResult,
    Prediction,
    PredictOptions,
    options_from_recipe,
    predict,
    predict_case,
)
from cascadeseg.inference.sliding import AdaptiveForward, pad_to_multiple, sliding_window
from cascadeseg.inference.tta import flip_tta

__all__ = [
    "AdaptiveForward",
    "CaseResult",
    "LoadedModel",
    "PredictOptions",
    "Prediction",
    "average_probabilities",
    "flip_tta",
    "fuse_brain_mask",
    "load_models",
    "options_from_recipe",
    "pad_to_multiple",
    "postprocess_et",
    "predict",
    "predict_case",
    "sliding_window",
    "tune_et_threshold",
    "tune_postprocess",
]
