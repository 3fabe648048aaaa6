"""An explicit registry of networks: ``@register("name")`` on a class, ``build_model(name)``.

Names are looked up in a dict filled by the decorator (as timm and segmentation_models.pytorch do);
nothing is found by reflection from strings. Every registered class takes keyword-only constructor
arguments, all with defaults (the papers' sizes), and has the class attributes ``spatial_dims``
(2 or 3) and ``output_kind`` (``"regions"``, ``"labels"``, ``"cunet"`` or ``"bfcn"``) and the
attribute ``in_channels``. :func:`build_model` stores the full keyword arguments on the model as
``model_args``, so ``build_model(name, **model.model_args)`` rebuilds it (checkpoints rely on it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from cascadeseg.errors import ModelError

M = TypeVar("M", bound=type[nn.Module])

_MODELS: dict[str, type[nn.Module]] = {}
OUTPUT_KINDS = ("regions", "labels", "cunet", "bfcn")


def register(name: str) -> Callable[[M], M]:
    """Class decorator adding a network to the registry under ``name``."""

    def decorate(cls: M) -> M:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered")
        if getattr(cls, "output_kind", None) not in OUTPUT_KINDS:
            raise ValueError(f"{cls.__name__}.output_kind must be one of {OUTPUT_KINDS}")
        if getattr(cls, "spatial_dims", None) not in (2, 3):
            raise ValueError(f"{cls.__name__}.spatial_dims must be 2 or 3")
        _MODELS[name] = cls
        return cls

    return decorate


def available_models() -> list[str]:
    """Registered model names, sorted."""
    _load_builtin_models()
    return sorted(_MODELS)


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (its ``spatial_dims``, ``output_kind``...).

    Raises:
        ModelError: unknown name (the message lists the names).
    """
    return _get(name)


def _get(name: str) -> type[nn.Module]:
    _load_builtin_models()
    try:
        return _MODELS[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r} (available: {', '.join(sorted(_MODELS))})"
        ) from None


def _plain(value: Any) -> Any:
    # Tuples become lists so model_args survive YAML (safe_dump) and weights-only checkpoints.
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def model_defaults(name: str) -> dict[str, Any]:
    """The constructor's keyword arguments and their defaults for model ``name``."""
    cls = _get(name)
    params = inspect.signature(cls.__init__).parameters.values()
    return {
        p.name: _plain(p.default)
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build registered model ``name`` with its defaults updated by ``overrides``.

    Returns:
        the model, with ``model.model_args`` = the full keyword arguments used.

    Raises:
        ModelError: unknown model name (the message lists the names) or unknown argument
            (the message lists the valid ones), or arguments the model rejects.
    """
    cls = _get(name)
    args = model_defaults(name)
    unknown = sorted(set(overrides) - set(args))
    if unknown:
        raise ModelError(
            f"model {name!r} has no argument(s) {', '.join(unknown)} "
            f"(valid: {', '.join(sorted(args))})"
        )
    args.update({k: _plain(v) for k, v in overrides.items()})
    try:
        model = cls(**args)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {name!r}: invalid arguments ({exc})") from None
    # nn.Module.__setattr__ is typed for tensors and modules only; plain values are fine at runtime.
    model.model_args = dict(args)  # type: ignore[assignment]
    model.model_name = name  # type: ignore[assignment]
    return model


def build_saved_model(name: str, model_args: dict[str, Any]) -> nn.Module:
    """Rebuild model ``name`` from the ``model_args`` stored in a checkpoint.

    An argument added to a model after a checkpoint was written is missing from its saved
    arguments; the class attribute ``saved_defaults`` (optional) gives the value such old
    checkpoints were trained with, so they keep loading (e.g. ``cunet``'s ``aux_from``).
    """
    legacy = dict(getattr(_get(name), "saved_defaults", {}))
    return build_model(name, **{**legacy, **model_args})


def _load_builtin_models() -> None:
    # The built-in networks register themselves on import; importing them here (not at the top,
    # which would be circular) makes the registry complete however it is reached.
    from cascadeseg.models import bfcn, cunet, drn, two_stage, unet  # noqa: F401
