"""Averaged weights: a power-function exponential moving average (``train.ema_width``).

Neither paper averages weights. A moving average of the weights over the end of a run smooths
the step-to-step noise of the last iterate (snapshot ensembles do the like at the price of one
forward pass per snapshot; an average costs none). The fixed-decay EMA of most libraries (e.g.
``torch.optim.swa_utils.AveragedModel`` with a decay of 0.999) averages over a fixed number of
steps, so its reach depends on how many steps a run makes: a time-budgeted CPU run makes 700 or
1800 steps in the same minutes depending on the CPU. The power-function EMA of Karras et al.
(2024, "Analyzing and improving the training dynamics of diffusion models", sec. 3) averages over
a fixed *share* of the steps so far instead: after step ``t`` the average weighs the iterate of
step ``tau`` in proportion to ``tau ** gamma``, which it keeps with the decay
``beta_t = (1 - 1 / t) ** (gamma + 1)``. ``gamma`` comes from the width ``sigma_rel`` (the
standard deviation of the weighting's profile relative to the run's length), the value a
recipe sets: 0.1 puts the median weight at 92% of the run and 90% of the weight in its last
quarter. The first step's average is its iterate (``beta_1 = 0``), so no start-up bias is left.

The averaged copy is kept beside the model on the same device, updated after every optimiser
step (one fused ``lerp`` over the parameters; buffers such as batch-norm statistics are
copied, not averaged) and used for validation, ``best.pt`` and the snapshots; ``last.pt``
keeps the raw weights with the average, so a resumed run goes on exactly.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from cascadeseg.config_rules import EMA_MAX_WIDTH

#: The widest profile a power-function EMA reaches with ``gamma >= 0`` (gamma = 0: the plain
#: mean of all the iterates), ``sqrt(1 / 12)``; the config rule of ``train.ema_width`` reads it.
MAX_WIDTH = EMA_MAX_WIDTH


def width_of_gamma(gamma: float) -> float:
    """``sigma_rel`` of the power-function profile ``tau ** gamma`` on ``[0, 1]`` (Karras et
    al. 2024, eq. 3): ``sqrt((gamma + 1) / ((gamma + 2) ** 2 (gamma + 3)))``."""
    return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


def gamma_for_width(sigma_rel: float) -> float:
    """The exponent ``gamma >= 0`` whose profile has the relative width ``sigma_rel``.

    Args:
        sigma_rel: in ``(0, MAX_WIDTH]``; e.g. 0.05 -> 16.97, 0.10 -> 6.94, 0.2 -> 1.83.

    Raises:
        ValueError: outside that range.
    """
    if not 0.0 < sigma_rel <= MAX_WIDTH:
        raise ValueError(f"sigma_rel must be in (0, {MAX_WIDTH:.4f}], got {sigma_rel}")
    # width_of_gamma falls monotonically on [0, inf): double ``high`` until it brackets
    # sigma_rel, then bisect.
    low, high = 0.0, 1.0
    while width_of_gamma(high) > sigma_rel:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if width_of_gamma(mid) > sigma_rel:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def ema_share(sigma_rel: float, mass: float = 0.9) -> float:
    """The share of the run, counted back from its end, that holds ``mass`` of the average's
    weight: ``1 - (1 - mass) ** (1 / (gamma + 1))`` (0.1 -> 0.25)."""
    return 1.0 - (1.0 - mass) ** (1.0 / (gamma_for_width(sigma_rel) + 1.0))


def power_decay(step: int, gamma: float) -> float:
    """``beta_t = (1 - 1 / t) ** (gamma + 1)``: the weight the average keeps after step ``t``
    (``t >= 1``, counted from 1; 0 at the first step)."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


class WeightAverage:
    """A power-function EMA of a model's weights (see the module docstring).

    Args:
        model: the model being trained (not a DDP wrapper: its parameters are what the
            optimiser steps; every rank holds the same ones after a step).
        sigma_rel: relative width of the average (``train.ema_width``).

    Attributes:
        model: the averaged copy (eval mode, no gradients).
        updates: optimiser steps averaged so far.
    """

    def __init__(self, model: nn.Module, sigma_rel: float) -> None:
        self.gamma = gamma_for_width(sigma_rel)
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the weights ``model`` holds after an optimiser step into the average."""
        self.updates += 1
        weight = 1.0 - power_decay(self.updates, self.gamma)
        averaged: list[torch.Tensor] = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, weight)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, object]:
        """The average's weights and step count, for ``last.pt``."""
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` (a resumed run)."""
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[call-overload]
