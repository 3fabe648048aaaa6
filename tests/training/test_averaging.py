"""The power-function moving average of the weights (``train.ema_width``)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from cascadeseg.config import Config, apply_overrides
from cascadeseg.errors import ConfigError
from cascadeseg.training.averaging import (
    MAX_WIDTH,
    WeightAverage,
    ema_share,
    gamma_for_width,
    power_decay,
    width_of_gamma,
)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.1, 0.137, 0.2, 0.28, MAX_WIDTH])
def test_gamma_for_width_inverts_the_width(sigma_rel: float) -> None:
    gamma = gamma_for_width(sigma_rel)
    assert gamma >= 0
    assert width_of_gamma(gamma) == pytest.approx(sigma_rel, rel=1e-9)


def test_known_widths_and_shares() -> None:
    # Karras et al. 2024: sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> 6.94.
    assert gamma_for_width(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_for_width(0.10) == pytest.approx(6.94, abs=0.01)
    assert gamma_for_width(MAX_WIDTH) == pytest.approx(0.0, abs=1e-6)
    # gamma = 0 is the plain mean: 90% of the weight lies in the last 90% of the run.
    assert ema_share(MAX_WIDTH) == pytest.approx(0.9, abs=1e-6)
    assert 0.24 < ema_share(0.1) < 0.26
    assert ema_share(0.05) < ema_share(0.1) < ema_share(0.2)


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.3, math.nan])
def test_gamma_for_width_refuses_widths_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match="sigma_rel"):
        gamma_for_width(bad)


def test_power_decay_starts_at_zero_and_rises() -> None:
    gamma = gamma_for_width(0.1)
    assert power_decay(1, gamma) == 0.0
    values = [power_decay(t, gamma) for t in range(1, 200)]
    assert all(a < b < 1 for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError):
        power_decay(0, gamma)


def test_average_weighs_each_iterate_by_the_power_profile() -> None:
    """After t updates the average is sum_tau w_tau theta_tau with
    w_tau = (tau^(g+1) - (tau-1)^(g+1)) / t^(g+1): the profile tau^g, discretised."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    average = WeightAverage(model, 0.15)
    gamma = average.gamma
    iterates = []
    for _ in range(25):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        iterates.append([p.detach().clone() for p in model.parameters()])
        average.update(model)
    t = len(iterates)
    weights = [
        (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / t ** (gamma + 1)
        for tau in range(1, t + 1)
    ]
    assert sum(weights) == pytest.approx(1.0)
    for i, p in enumerate(average.model.parameters()):
        expected = sum(w * it[i] for w, it in zip(weights, iterates))
        torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-5)
    assert average.updates == t
    # The first update copies the model: no trace of the initial weights remains.
    first = WeightAverage(nn.Linear(3, 2), 0.1)
    fresh = nn.Linear(3, 2)
    first.update(fresh)
    for a, b in zip(first.model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_average_copies_buffers_and_round_trips() -> None:
    model = nn.Sequential(nn.Conv1d(2, 2, 1), nn.BatchNorm1d(2))
    average = WeightAverage(model, 0.1)
    model.train()
    model(torch.randn(4, 2, 5))  # moves the running statistics
    average.update(model)
    assert torch.equal(average.model[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in average.model.parameters())
    assert not average.model.training
    restored = WeightAverage(model, 0.1)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 1
    for a, b in zip(restored.model.state_dict().values(), average.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", ["-0.1", "0.3", "nan"])
def test_config_refuses_bad_widths(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"train\.ema_width"):
        apply_overrides(Config(), [f"train.ema_width={bad}"])


def test_inference_state_prefers_the_average_and_refuses_a_malformed_one() -> None:
    from cascadeseg.errors import ModelError
    from cascadeseg.models.checkpoint import inference_state

    raw, avg = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert inference_state("a.pt", {"model": raw}) is raw
    assert inference_state("a.pt", {"model": raw, "average": {"model": avg}}) is avg
    for bad in ([1, 2], {"updates": 3}, {"model": "weights"}):
        with pytest.raises(ModelError, match=r"a\.pt: malformed 'average'"):
            inference_state("a.pt", {"model": raw, "average": bad})
