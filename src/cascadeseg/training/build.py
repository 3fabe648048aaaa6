"""What a run trains: the registered model with the recipe's training options, and its optimiser."""

from __future__ import annotations

from typing import Any

import torch

from cascadeseg.config import OPTIMIZERS, Config, OptimConfig
from cascadeseg.data.case import MODALITIES
from cascadeseg.data.missing import extra_input_channels, model_missing_fill
from cascadeseg.errors import ConfigError, ModelError
from cascadeseg.models import SegmentationModule, build_model, model_defaults, network_spec


def model_spatial_dims(model_name: str) -> int:
    """2 or 3: the ``spatial_dims`` of the network registered as ``model_name``.

    Decides what the trainer feeds it: axial slices (2) or crops of the volume (3).
    """
    return network_spec(model_name).spatial_dims


def training_missing_fill(cfg: Config) -> str | None:
    """How the model of ``cfg`` takes missing sequences: ``None`` (no sequence dropout),
    ``mask`` or ``zero`` (:func:`cascadeseg.data.missing.model_missing_fill`)."""
    return model_missing_fill(cfg.data.sequence_dropout, cfg.data.missing_fill)


def build_training_model(cfg: Config) -> SegmentationModule:
    """The registered model with ``model.args``, the checkpointing flag, the slice context and
    the availability channels.

    2D models get ``data.slice_context`` as their own ``slice_context`` argument (CU-Net) or as
    ``4 * (2c + 1)`` input channels (the others). With sequence dropout and the ``mask`` fill
    the input has 4 more channels (:mod:`cascadeseg.data.missing`); a model without an
    ``in_channels`` argument (CU-Net) takes the ``zero`` fill only.

    Raises:
        ConfigError: an option the model does not support, or ``model.args`` the model rejects.
    """
    defaults = model_defaults(cfg.model.name)
    args = dict(cfg.model.args)
    if cfg.train.checkpointing:
        if "checkpointing" not in defaults:
            raise ConfigError(f"train.checkpointing: model {cfg.model.name!r} does not support it")
        args["checkpointing"] = True
    channels = len(MODALITIES)
    if cfg.data.slice_context:
        if model_spatial_dims(cfg.model.name) != 2:
            raise ConfigError("data.slice_context applies to 2D models only")
        if "slice_context" in defaults:
            args.setdefault("slice_context", cfg.data.slice_context)
        else:
            channels *= 2 * cfg.data.slice_context + 1
            args.setdefault("in_channels", channels)
    extra = extra_input_channels(training_missing_fill(cfg))
    if extra:
        if "in_channels" not in defaults:
            raise ConfigError(
                f"data.missing_fill=mask: model {cfg.model.name!r} has no in_channels argument "
                "for the availability channels; use data.missing_fill=zero"
            )
        args["in_channels"] = int(args.get("in_channels", channels)) + extra
    try:
        return build_model(cfg.model.name, **args)
    except ModelError as exc:
        # Unknown or rejected arguments: name the recipe key they came from.
        raise ConfigError(f"model.args: {exc}") from None


def saved_model_args(model: SegmentationModule) -> dict[str, Any]:
    """Constructor kwargs to store in checkpoints (gradient checkpointing off for inference)."""
    args: dict[str, Any] = dict(model.model_args)
    if "checkpointing" in args:
        args["checkpointing"] = False
    return args


def build_optimizer(params: Any, optim_cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with momentum) from ``cfg.optim``, weight decay on every parameter.

    The two-stage paper's "l2 weight decay of 1e-5" with Adam is torch's coupled ``weight_decay``
    of :class:`torch.optim.Adam`; CU-Net's SGD uses the same L2 term (``lambda * psi`` of its
    Eq. 4). AdamW applies decoupled decay (Loshchilov & Hutter), the usual choice for new recipes.
    """
    name = optim_cfg.name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim_cfg.lr,
            momentum=optim_cfg.momentum,
            weight_decay=optim_cfg.weight_decay,
        )
    raise ConfigError(f"optim.name={optim_cfg.name!r}: expected one of {OPTIMIZERS}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
