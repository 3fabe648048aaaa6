"""Networks: shared blocks, the two-stage cascade (3D), CU-Net (2D), the baselines, registry.

``build_model(name, **overrides)`` builds ``two_stage``, ``cunet``, ``unet3d``, ``unet2d``,
``bfcn`` or ``drn``;
``region_probabilities(output, model.output_kind)`` turns any eval output into ``[WT, TC, ET]``
probabilities.
"""

from __future__ import annotations

# Importing the network modules registers them (``@register``).
from cascadeseg.models import bfcn, cunet, drn, two_stage, unet  # noqa: F401
from cascadeseg.models.bfcn import BFCNOutput
from cascadeseg.models.cunet import CUNetOutput
from cascadeseg.models.outputs import count_parameters, region_probabilities
from cascadeseg.models.registry import available_models, build_model, model_defaults
from cascadeseg.models.two_stage import TwoStageOutput

__all__ = [
    "BFCNOutput",
    "CUNetOutput",
    "TwoStageOutput",
    "available_models",
    "build_model",
    "count_parameters",
    "model_defaults",
    "region_probabilities",
]
