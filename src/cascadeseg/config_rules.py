"""The rules every :class:`cascadeseg.config.Config` value is checked against, in one table.

:func:`validate` runs in ``Config.__post_init__``, so every way of building a configuration (YAML,
``key=value`` overrides, checkpoints, ``dataclasses.replace``) refuses a bad value where it is
set, naming its key. The names of the choices (precisions, optimisers, schedules, splits) are
defined here once and read by the code that acts on them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from cascadeseg.errors import ConfigError

#: (what the value must be, the test); the message reads "<key> must be <what>, got <value>".
Rule = tuple[str, Callable[[Any], bool]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


POSITIVE_INT: Rule = ("a positive integer", lambda v: _is_int(v) and v > 0)
POSITIVE_EVEN_INT: Rule = ("a positive even integer", lambda v: _is_int(v) and v > 0 and v % 2 == 0)
NON_NEGATIVE_INT: Rule = ("an integer >= 0", lambda v: _is_int(v) and v >= 0)
POSITIVE: Rule = ("a finite positive number", lambda v: _is_finite(v) and v > 0)
NON_NEGATIVE: Rule = ("a finite number >= 0", lambda v: _is_finite(v) and v >= 0)
PROBABILITY: Rule = ("a probability in [0, 1]", lambda v: _is_finite(v) and 0 <= v <= 1)
FRACTION_BELOW_ONE: Rule = ("a number in [0, 1)", lambda v: _is_finite(v) and 0 <= v < 1)
FACTOR: Rule = ("a factor in (0, 1]", lambda v: _is_finite(v) and 0 < v <= 1)


def optional(rule: Rule) -> Rule:
    """``rule`` or ``None``."""
    what, test = rule
    return (f"{what} or null", lambda v: v is None or test(v))


def each(rule: Rule, lengths: tuple[int, ...] = ()) -> Rule:
    """A non-empty list whose entries all satisfy ``rule`` (its length one of ``lengths``)."""
    what, test = rule
    text = "a list of " + (f"{lengths[0]} " if len(lengths) == 1 else "")
    text += what.removeprefix("a ").replace("number", "numbers").replace("integer", "integers")
    if len(lengths) > 1:
        text += f" ({' or '.join(map(str, lengths))} values)"
    return (
        text,
        lambda v: (
            isinstance(v, (list, tuple))
            and len(v) > 0
            and (not lengths or len(v) in lengths)
            and all(test(x) for x in v)
        ),
    )


def _disjoint_channel_groups(value: Any) -> bool:
    """Lists of channel numbers 0-3, no channel in two of them (``data.bias_field_groups``)."""
    if not isinstance(value, (list, tuple)):
        return False
    seen: list[Any] = []
    for group in value:
        if not isinstance(group, (list, tuple)):
            return False
        seen.extend(group)
    return all(_is_int(c) and 0 <= c <= 3 for c in seen) and len(set(seen)) == len(seen)


def one_of(*choices: str) -> Rule:
    """One of ``choices`` (strings)."""
    return (f"one of {', '.join(choices)}", lambda v: v in choices)


#: Training precisions, shared with the trainer and ``runtime``; prediction takes fewer (fp16
#: is refused there).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("poly", "step", "constant")
SPLITS = ("kfold", "cunet", "all")
#: How a missing sequence reaches the network (:mod:`cascadeseg.data.missing`).
MISSING_FILLS = ("mask", "zero")
#: How a label map is resampled to ``data.target_spacing`` (:mod:`cascadeseg.data.preprocess_ops`).
LABEL_RESAMPLINGS = ("regions", "soft", "nearest")
#: How a tumour-centred crop picks its centre (:func:`cascadeseg.data.augment.draw_crop_start`).
FOREGROUND_SAMPLINGS = ("voxel", "region")
#: The widest moving average of the weights, ``train.ema_width`` (:mod:`cascadeseg.training.
#: averaging`): a power-function profile with ``gamma = 0``, the plain mean, ``sqrt(1 / 12)``.
EMA_MAX_WIDTH = math.sqrt(1.0 / 12.0)

RULES: dict[str, Rule] = {
    "data.target_spacing": optional(each(POSITIVE, (3,))),
    "data.label_resampling": one_of(*LABEL_RESAMPLINGS),
    "data.n4_shrink_factor": POSITIVE_INT,
    "data.n4_iterations": each(POSITIVE_INT),
    "data.n4_channels": optional(
        ("a list of channel numbers 0-3", lambda v: all(_is_int(c) and 0 <= c <= 3 for c in v))
    ),
    "data.crop_margin": NON_NEGATIVE_INT,
    "data.patch_size": each(POSITIVE_INT, (2, 3)),
    "data.foreground_prob": PROBABILITY,
    "data.foreground_sampling": one_of(*FOREGROUND_SAMPLINGS),
    "data.crop_overhang": ("a number in [0, 0.5]", lambda v: _is_finite(v) and 0 <= v <= 0.5),
    "data.bias_field_prob": PROBABILITY,
    "data.bias_field_strength": (
        "[low, high] with 0 <= low <= high",
        lambda v: all(_is_finite(x) for x in v) and 0 <= v[0] <= v[1],
    ),
    "data.bias_field_spacing_mm": POSITIVE,
    "data.bias_field_groups": (
        "a list of lists of channel numbers 0-3, each channel in one list at most",
        _disjoint_channel_groups,
    ),
    "data.compartment_contrast_prob": PROBABILITY,
    "data.compartment_contrast": ("a number in [0, 1)", lambda v: _is_finite(v) and 0 <= v < 1),
    "data.compartment_contrast_channels": ("0 to 4", lambda v: _is_int(v) and 0 <= v <= 4),
    "data.enhancement_erase_prob": PROBABILITY,
    "data.slice_context": NON_NEGATIVE_INT,
    "data.drop_empty_slices": PROBABILITY,
    "data.num_workers": NON_NEGATIVE_INT,
    "data.folds": ("an integer >= 2", lambda v: _is_int(v) and v >= 2),
    "data.fold": NON_NEGATIVE_INT,
    "data.split": one_of(*SPLITS),
    "data.split_stratify": one_of("none", "kind"),
    "data.crop_region": one_of("brain", "volume"),
    "data.case_balance": ("a number in [0, 1]", lambda v: _is_finite(v) and 0 <= v <= 1),
    "data.sequence_dropout": PROBABILITY,
    "data.sequence_dropout_max": ("1, 2 or 3", lambda v: _is_int(v) and 1 <= v <= 3),
    "data.sequence_dropout_start": FRACTION_BELOW_ONE,
    "data.sequence_dropout_end": ("a number in (0, 1]", lambda v: _is_finite(v) and 0 < v <= 1),
    "data.missing_fill": one_of(*MISSING_FILLS),
    "data.early_patch_size": optional(each(POSITIVE_INT, (3,))),
    "data.early_patch_end": FRACTION_BELOW_ONE,
    "model.name": ("a model name", lambda v: isinstance(v, str) and v.strip() != ""),
    "loss.interp_decoder_weight": NON_NEGATIVE,
    "loss.dice_eps": NON_NEGATIVE,
    "loss.dice_smooth_nr": NON_NEGATIVE,
    "loss.bce_weight": NON_NEGATIVE,
    "loss.region_weights": (
        "a list of 3 numbers >= 0, not all 0",
        lambda v: each(NON_NEGATIVE, (3,))[1](v) and any(x > 0 for x in v),
    ),
    "loss.lws_alpha": NON_NEGATIVE,
    "loss.lws_beta": POSITIVE,
    "loss.contour_width": NON_NEGATIVE_INT,
    "loss.aux_weight": NON_NEGATIVE,
    "loss.boundary_weight": NON_NEGATIVE,
    "loss.boundary_width": (
        "a positive even integer",
        lambda v: _is_int(v) and v > 0 and v % 2 == 0,
    ),
    "loss.aux_decay": FACTOR,
    "loss.aux_decay_every": POSITIVE_INT,
    "loss.aux_min": NON_NEGATIVE,
    "optim.name": ("one of adam, adamw, sgd", lambda v: str(v).lower() in OPTIMIZERS),
    "optim.lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.momentum": FRACTION_BELOW_ONE,
    "optim.schedule": one_of(*SCHEDULES),
    "optim.warmup_epochs": NON_NEGATIVE_INT,
    "optim.poly_power": POSITIVE,
    "optim.step_every": POSITIVE_INT,
    "optim.step_gamma": FACTOR,
    "optim.min_lr": NON_NEGATIVE,
    "optim.grad_clip": optional(POSITIVE),
    "train.epochs": POSITIVE_INT,
    "train.iters_per_epoch": optional(POSITIVE_INT),
    "train.batch_size": POSITIVE_INT,
    "train.precision": one_of(*PRECISIONS),
    "train.snapshots": NON_NEGATIVE_INT,
    "train.val_every": NON_NEGATIVE_INT,
    "train.val_cases": optional(POSITIVE_INT),
    "train.early_stop_patience": NON_NEGATIVE_INT,
    "train.max_minutes": optional(POSITIVE),
    "train.checkpoint_every": NON_NEGATIVE_INT,
    "train.stage1_first": FRACTION_BELOW_ONE,
    "train.monitor": one_of("dice", "objective"),
    "train.ema_width": (
        f"0 (off) or a number in (0, {math.floor(EMA_MAX_WIDTH * 1e4) / 1e4}]",
        lambda v: _is_finite(v) and 0 <= v <= EMA_MAX_WIDTH,
    ),
    "train.device": (
        "auto, cpu, cuda or cuda:N",
        lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
    ),
    "inference.threshold": PROBABILITY,
    "inference.tc_threshold_without_et": optional(PROBABILITY),
    "inference.et_min_voxels": NON_NEGATIVE_INT,
    "inference.sliding_window": one_of("auto", "always", "never"),
    "inference.overlap": FRACTION_BELOW_ONE,
    "inference.precision": one_of(*INFERENCE_PRECISIONS),  # what predict runs
    "inference.tta_region": one_of("volume", "tumour", "auto"),
    "inference.tta_region_threshold": PROBABILITY,
    "inference.tta_region_margin": NON_NEGATIVE_INT,
    "seed": NON_NEGATIVE_INT,
}

# Model arguments are free-form (each network has its own), so they are checked by name: sizes
# (widths, channels, depths, group and block counts) are positive integers, dropout-like values
# probabilities, and every number is finite. The registry checks their types against the
# constructor and turns what the constructor rejects into a one-line error (models/registry.py).
_SIZE_ARG = re.compile(r"width|channels|depth|groups|blocks|levels|features")
_PROB_ARG = re.compile(r"dropout|prob")


def model_arg_problem(name: str, value: Any) -> str | None:
    """What is wrong with model argument ``name=value`` (``None``: nothing found).

    Returns the end of a sentence, e.g. ``"must be a positive integer, got 0"``.
    """
    values = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        return f"must be finite, got {_show(value)}"
    if value is None or isinstance(value, bool):
        return None
    if _SIZE_ARG.search(name):
        if "factor" in name:
            what, test = POSITIVE
        elif isinstance(value, (list, tuple)):
            what, test = each(POSITIVE_INT)
        else:
            what, test = POSITIVE_INT
        if not test(value):
            return f"must be {what}, got {_show(value)}"
    elif _PROB_ARG.search(name) and not PROBABILITY[1](value):
        return f"must be {PROBABILITY[0]}, got {_show(value)}"
    return None


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


def _lookup(cfg: Any, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Any) -> None:
    """Check every value of ``cfg`` against :data:`RULES` and the model arguments.

    Raises:
        ConfigError: the first bad value, e.g. ``optim.lr must be a finite positive number,
            got nan``.
    """
    for key, (what, test) in RULES.items():
        value = _lookup(cfg, key)
        try:
            ok = bool(test(value))
        except (TypeError, ValueError, IndexError):
            ok = False
        if not ok:
            raise ConfigError(f"{key} must be {what}, got {_show(value)}")
    if cfg.data.fold >= cfg.data.folds:
        raise ConfigError(
            f"data.fold must be in [0, data.folds) = [0, {cfg.data.folds}), got {cfg.data.fold}"
        )
    _check_dropout_window(cfg.data)
    _check_early_patch(cfg.data)
    for name, value in cfg.model.args.items():
        problem = model_arg_problem(str(name), value)
        if problem:
            raise ConfigError(f"model.args.{name} {problem}")


def _check_dropout_window(data: Any) -> None:
    """``data.sequence_dropout_start`` / ``_end``: only with sequence dropout, start < end."""
    start, end = data.sequence_dropout_start, data.sequence_dropout_end
    for key, value, off in (("start", start, 0.0), ("end", end, 1.0)):
        if value != off and data.sequence_dropout <= 0:
            raise ConfigError(
                f"data.sequence_dropout_{key}={value} needs sequence dropout "
                "(data.sequence_dropout > 0)"
            )
    if start >= end:
        raise ConfigError(
            f"data.sequence_dropout_start={start} must be below data.sequence_dropout_end={end}"
        )


def _check_early_patch(data: Any) -> None:
    """``data.early_patch_size`` / ``_end``: both or neither. (Sides above ``patch_size`` are
    cut to it, :func:`cascadeseg.config.early_crop_size`, so that a smaller ``patch_size``
    given to a recipe with early crops needs nothing more.)"""
    size, end = data.early_patch_size, data.early_patch_end
    if size is None:
        if end != 0:
            raise ConfigError(f"data.early_patch_end={end} needs data.early_patch_size")
        if data.bias_field_early_only:
            raise ConfigError("data.bias_field_early_only needs data.early_patch_size")
        return
    if end <= 0:
        raise ConfigError(
            f"data.early_patch_size={list(size)} needs data.early_patch_end in (0, 1), "
            "the share of the run on these crops"
        )
