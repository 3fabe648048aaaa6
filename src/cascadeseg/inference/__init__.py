"""Inference: predictor, flip TTA, sliding window, ensembles, post-processing, export."""
