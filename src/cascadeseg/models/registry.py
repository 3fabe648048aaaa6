"""An explicit registry of networks: ``@register("name")`` on a class, ``build_model(name)``.

Names are looked up in a dict filled by the decorator (as timm and segmentation_models.pytorch do);
nothing is found by reflection from strings. Every registered class takes keyword-only constructor
arguments, all with defaults (the papers' sizes), and has the class attributes ``spatial_dims``
(2 or 3) and ``output_kind`` (a key of :data:`cascadeseg.models.outputs.OUTPUT_KINDS`) and the
attribute ``in_channels``: :class:`cascadeseg.models.protocol.SegmentationNetwork`.
:func:`build_model` stores the full keyword arguments on the model as ``model_args``, so
``build_model(name, **model.model_args)`` rebuilds it (checkpoints rely on it);
:func:`network_spec` describes a network without building it.

This module does not import the networks: they import it to register themselves, and importing
the package :mod:`cascadeseg.models` imports them all, so use the lookups through the package.
"""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from cascadeseg.config import model_arg_problem
from cascadeseg.errors import ModelError
from cascadeseg.models.outputs import OUTPUT_KINDS
from cascadeseg.models.protocol import SegmentationModule, contract_problems

M = TypeVar("M", bound=type[nn.Module])


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network, described without building it.

    Attributes:
        name: registry name.
        network: the registered class.
        spatial_dims: 2 or 3 (the class's ``spatial_dims``).
        output_kind: key of :data:`cascadeseg.models.outputs.OUTPUT_KINDS` (the class's).
        defaults: the constructor's keyword arguments and their defaults (tuples as lists, so
            they survive YAML and weights-only checkpoints); read-only, :func:`model_defaults`
            gives a copy.
        saved_defaults: values for arguments added after checkpoints were written, as those
            checkpoints were trained (see :func:`build_saved_model`); read-only.
    """

    name: str
    network: type[nn.Module]
    spatial_dims: int
    output_kind: str
    defaults: Mapping[str, Any]
    saved_defaults: Mapping[str, Any]

    @property
    def in_channels(self) -> int:
        """Input channels of the network built with its defaults (built on the meta device)."""
        with torch.device("meta"):
            network = self.network(**copy.deepcopy(dict(self.defaults)))
        return _with_contract(self.name, network, {}).in_channels


_SPECS: dict[str, NetworkSpec] = {}


def register(name: str, *, saved_defaults: dict[str, Any] | None = None) -> Callable[[M], M]:
    """Class decorator adding a network to the registry under ``name``.

    The class needs the class attributes ``spatial_dims`` (2 or 3) and ``output_kind`` (a key of
    :data:`~cascadeseg.models.outputs.OUTPUT_KINDS`), keyword-only constructor arguments with
    defaults, and must set ``self.in_channels`` (see
    :class:`~cascadeseg.models.protocol.SegmentationNetwork`). ``saved_defaults``: see
    :attr:`NetworkSpec.saved_defaults`.

    Raises:
        ValueError: ``name`` is taken by another class, or a class attribute is missing or wrong.
    """

    def decorate(cls: M) -> M:
        known = _SPECS.get(name)
        if known is not None and known.network is not cls:
            raise ValueError(f"model name {name!r} is already registered")
        # The class is checked once, here; lookups read the spec.
        output_kind = getattr(cls, "output_kind", None)
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"{cls.__name__}.output_kind must be one of {', '.join(OUTPUT_KINDS)}")
        spatial_dims = getattr(cls, "spatial_dims", None)
        if spatial_dims not in (2, 3):
            raise ValueError(f"{cls.__name__}.spatial_dims must be 2 or 3")
        _SPECS[name] = NetworkSpec(
            name=name,
            network=cls,
            spatial_dims=int(spatial_dims),
            output_kind=str(output_kind),
            defaults=types.MappingProxyType(_constructor_defaults(cls)),
            saved_defaults=types.MappingProxyType(dict(saved_defaults or {})),
        )
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (tests that register a network of their own).

    Raises:
        ModelError: unknown name.
    """
    network_spec(name)
    del _SPECS[name]


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_SPECS)


def network_spec(name: str) -> NetworkSpec:
    """What the network registered as ``name`` is (dimensions, output kind, defaults...).

    Raises:
        ModelError: unknown name (the message lists the names).
    """
    try:
        return _SPECS[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r} (available: {', '.join(sorted(_SPECS))})"
        ) from None


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (:func:`network_spec` describes it).

    Raises:
        ModelError: unknown name (the message lists the names).
    """
    return network_spec(name).network


def _plain(value: Any) -> Any:
    # Tuples become lists so model_args survive YAML (safe_dump) and weights-only checkpoints.
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _constructor_defaults(cls: type[nn.Module]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {
        p.name: _plain(p.default)
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }


def model_defaults(name: str) -> dict[str, Any]:
    """The constructor's keyword arguments and their defaults for model ``name`` (a copy)."""
    return copy.deepcopy(dict(network_spec(name).defaults))


def build_model(name: str, **overrides: Any) -> SegmentationModule:
    """Build registered model ``name`` with its defaults updated by ``overrides``.

    Returns:
        the model, with ``model.model_args`` = the full keyword arguments used; it satisfies
        :class:`~cascadeseg.models.protocol.SegmentationNetwork`.

    Raises:
        ModelError: unknown model name (the message lists the names) or unknown argument
            (the message lists the valid ones), a value of the wrong type or range (sizes must be
            positive, numbers finite: :func:`cascadeseg.config.model_arg_problem`), arguments
            the constructor rejects, or arguments that leave a layer without parameters; a
            network class that breaks the contract (no ``in_channels``, say).
    """
    cls = network_spec(name).network
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
    return _with_contract(name, model, args)


def _with_contract(name: str, model: nn.Module, args: dict[str, Any]) -> SegmentationModule:
    """``model`` with ``model_args = args``, checked against the network contract."""
    # nn.Module.__setattr__ is typed for tensors and modules only; plain values are fine at runtime.
    model.model_args = dict(args)  # type: ignore[assignment]
    problems = contract_problems(model)
    if problems:
        raise ModelError(f"model {name!r} breaks the network contract: {'; '.join(problems)}")
    return typing.cast(SegmentationModule, model)


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


def build_saved_model(name: str, model_args: dict[str, Any]) -> SegmentationModule:
    """Rebuild model ``name`` from the ``model_args`` stored in a checkpoint.

    An argument added to a model after a checkpoint was written is missing from its saved
    arguments; the registration's ``saved_defaults`` (:attr:`NetworkSpec.saved_defaults`) give
    the values such old checkpoints were trained with, so they keep loading (e.g. ``cunet``'s
    ``aux_from``).
    """
    legacy = network_spec(name).saved_defaults
    return build_model(name, **{**legacy, **model_args})
