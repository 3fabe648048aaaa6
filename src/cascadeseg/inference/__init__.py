"""Inference: predictor, flip TTA, sliding window, ensembles, post-processing, export.

Modules by job: ``loading`` (checkpoints and ONNX files -> :class:`LoadedModel`), ``ensemble``
(flip plan, averaging members), ``options`` (:class:`PredictOptions`, the recipe's settings),
``volume`` (one network on one preprocessed volume, :func:`predict_volume`), ``sliding`` (window
arithmetic) and ``memory`` (memory policy, :class:`AdaptiveForward`), ``tta``, ``predictor``
(cases), ``outputs`` (files and reports), ``plan`` (inputs and outputs checked before any
inference), ``shards`` (several processes), ``postprocess`` / ``lesion_postprocess`` (pure
post-processing) and ``tuning`` (its thresholds), ``export`` (ONNX).

Typical use::

    from cascadeseg.inference import PredictOptions, load_models, options_from_recipe, predict

    models = load_models(["runs/two_stage_fold0"], device="cpu")
    results = predict(models, "data/BraTS2021_val", "predictions", PredictOptions(tta=True))
    # or with the settings stored in the models' recipe (what `cascadeseg predict` does):
    options = options_from_recipe(models, {"tta": None}, device="cpu")
"""

from __future__ import annotations

from cascadeseg.inference.ensemble import average_probabilities
from cascadeseg.inference.loading import LoadedModel, load_models
from cascadeseg.inference.memory import AdaptiveForward
from cascadeseg.inference.options import PredictOptions, options_from_recipe
from cascadeseg.inference.outputs import CaseResult, Prediction
from cascadeseg.inference.postprocess import fuse_brain_mask, postprocess_et
from cascadeseg.inference.predictor import predict, predict_case
from cascadeseg.inference.sliding import pad_to_multiple, sliding_window
from cascadeseg.inference.tta import flip_tta
from cascadeseg.inference.tuning import tune_et_threshold, tune_postprocess
from cascadeseg.inference.volume import predict_volume

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
    "predict_volume",
    "sliding_window",
    "tune_et_threshold",
    "tune_postprocess",
]
