"""Networks: shared blocks, the two-stage cascade (3D), CU-Net (2D), the baselines, registry.

``build_model(name, **overrides)`` builds ``two_stage``, ``cunet``, ``unet3d``, ``unet2d``,
``bfcn`` or ``drn`` (a :class:`SegmentationModule`: ``spatial_dims``, ``in_channels``,
``output_kind``, ``model_args``); ``network_spec(name)`` describes one without building it;
``region_probabilities(output, model.output_kind)`` turns any eval output into ``[WT, TC, ET]``
probabilities.

Importing this package registers the built-in networks: use the registry through it
(``from cascadeseg.models import build_model``). A new network is one module with a class
decorated ``@register("name")`` (see :mod:`cascadeseg.models.protocol` for the contract),
imported below.

Imports run one way: :mod:`.protocol` (the contract) < :mod:`.outputs` (output kinds) <
:mod:`.registry` < the network modules (built from :mod:`.blocks`) < this package.
"""

from __future__ import annotations

# Importing the network modules registers them (``@register``).
from cascadeseg.models import bfcn, cunet, drn, two_stage, unet  # noqa: F401
from cascadeseg.models.outputs import (
    OUTPUT_KINDS,
    BFCNOutput,
    CUNetOutput,
    OutputKind,
    TwoStageOutput,
    count_parameters,
    region_probabilities,
    register_output_kind,
)
from cascadeseg.models.protocol import SegmentationModule, SegmentationNetwork
from cascadeseg.models.registry import (
    NetworkSpec,
    available_models,
    build_model,
    build_saved_model,
    model_class,
    model_defaults,
    network_spec,
    register,
    unregister,
)

__all__ = [
    "OUTPUT_KINDS",
    "BFCNOutput",
    "CUNetOutput",
    "NetworkSpec",
    "OutputKind",
    "SegmentationModule",
    "SegmentationNetwork",
    "TwoStageOutput",
    "available_models",
    "build_model",
    "build_saved_model",
    "count_parameters",
    "model_class",
    "model_defaults",
    "network_spec",
    "region_probabilities",
    "register",
    "register_output_kind",
    "unregister",
]
