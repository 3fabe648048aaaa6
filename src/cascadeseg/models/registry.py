"""An explicit registry of networks: ``@register("name")`` on a class, ``build_model(name)``.

Names are looked up in a dict filled by the decorator (as timm and segmentation_models.pytorch do);
nothing is found by reflection from strings. Every registered class takes keyword-only constructor
arguments, all with defaults (the papers' sizes), and has the class attributes ``spatial_dims``
(2 or 3) and ``output_kind`` (``"regions"``, ``"labels"``, ``"cunet"`` or ``"bfcn"``) and the
attribute ``in_channels``. :func:`build_model` stores the full keyword arguments on the model as
``model_args``, so ``build_model(name, **model.model_args)`` rebuilds it (checkpoints rely on it).
"""

from __future__ import annotations

import collections.abc
import contextlib
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from cascadeseg.config import model_arg_problem
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
            (the message lists the valid ones), a value of the wrong type or range (sizes must be
            positive, numbers finite: :func:`cascadeseg.config.model_arg_problem`), arguments
            the constructor rejects, or arguments that leave a layer without parameters.
    """
    cls = _get(name)
    args = model_defaults(name)
    unknown = sorted(set(overrides) - set(args))
    if unknown:
        raise ModelError(
            f"model {name!r} has no argument(s) {', '.join(unknown)} "
            f"(valid: {', '.join(sorted(args))})"
        )
    hints = _argument_types(cls)
    for key, value in overrides.items():
        args[key] = _checked_argument(name, key, _plain(value), hints.get(key))
    given = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "its defaults"
    try:
        model = cls(**args)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
        # Constructors check what they can; whatever else they trip over is still the user's
        # arguments, not a bug: one line naming them.
        raise ModelError(f"model {name!r} rejects {given}: {exc}") from None
    empty = next((n for n, p in model.named_parameters() if p.numel() == 0), None)
    if empty is not None:
        raise ModelError(f"model {name!r} with {given} has an empty layer ({empty})")
    # nn.Module.__setattr__ is typed for tensors and modules only; plain values are fine at runtime.
    model.model_args = dict(args)  # type: ignore[assignment]
    model.model_name = name  # type: ignore[assignment]
    return model


def _argument_types(cls: type[nn.Module]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):  # an annotation that cannot be resolved: no type checks
        return {}


def _checked_argument(model: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` as the constructor's annotation ``hint`` wants it, or a :class:`ModelError`.

    Numbers written as strings (YAML 1.1 reads ``1e-4`` and ``nan`` as strings) become floats
    where a float is expected, as config values do.
    """
    options = typing.get_args(hint) if typing.get_origin(hint) in _UNIONS else (hint,)
    if float in options and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    fits = (
        hint is None
        or (value is None and type(None) in options)
        or any(_fits(value, option) for option in options if option is not type(None))
    )
    if not fits:
        raise ModelError(f"model {model!r}: {key} must be {_type_text(hint)}, got {value!r}")
    problem = model_arg_problem(key, value)
    if problem:
        raise ModelError(f"model {model!r}: {key} {problem}")
    return value


_UNIONS = (typing.Union, types.UnionType)


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint) or hint
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence):
        inner = typing.get_args(hint)[:1]
        return isinstance(value, (list, tuple)) and all(_fits(v, inner[0]) for v in value if inner)
    return not isinstance(origin, type) or isinstance(value, origin)


def _type_text(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    options = typing.get_args(hint) if typing.get_origin(hint) in _UNIONS else (hint,)
    texts = [
        "null" if o is type(None) else names.get(o, "a list" if typing.get_origin(o) else str(o))
        for o in options
    ]
    return " or ".join(texts)


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
