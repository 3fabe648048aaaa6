"""Learning-rate and auxiliary-weight schedules: values at chosen epochs."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cascadeseg.config import LossConfig, OptimConfig
from cascadeseg.errors import ConfigError
from cascadeseg.training.schedules import aux_weight_at, lr_at, poly_lr, step_lr

#: The papers' auxiliary weight: 0.1, divided by 10 every 10 epochs, floor 1e-3.
PAPER = LossConfig()


def test_poly_lr_values() -> None:
    kwargs: dict[str, Any] = {"base_lr": 1.0, "epochs": 10, "warmup_epochs": 5, "power": 0.9}
    # Warm-up factor 1/5 + (4/5) * e / 5 times Eq. 3's (1 - e/10)^0.9.
    assert poly_lr(0, **kwargs) == pytest.approx(0.2)
    assert poly_lr(2.5, **kwargs) == pytest.approx((0.2 + 0.8 * 0.5) * 0.75**0.9)
    # From the end of the warm-up on: exactly Eq. 3.
    assert poly_lr(5, **kwargs) == pytest.approx(0.5**0.9)
    assert poly_lr(7, **kwargs) == pytest.approx(0.3**0.9)
    # e = N_e gives 0, and so does anything past it.
    assert poly_lr(10, **kwargs) == 0.0
    assert poly_lr(12, **kwargs) == 0.0
    # Continuous at the end of the warm-up.
    assert poly_lr(4.999, **kwargs) == pytest.approx(poly_lr(5, **kwargs), rel=1e-3)


def test_poly_lr_paper_recipe() -> None:
    # Paper: lr0 = 1e-4, 405 epochs, 5 warm-up epochs.
    kwargs: dict[str, Any] = {"base_lr": 1e-4, "epochs": 405}
    assert poly_lr(0, **kwargs) == pytest.approx(2e-5)
    assert poly_lr(200, **kwargs) == pytest.approx(1e-4 * (1 - 200 / 405) ** 0.9)
    values = [poly_lr(e / 10, **kwargs) for e in range(0, 50)]
    assert all(a < b for a, b in itertools.pairwise(values))  # smooth rise per iteration
    assert poly_lr(0, base_lr=1.0, epochs=10, warmup_epochs=0) == 1.0
    with pytest.raises(ValueError):
        poly_lr(0, base_lr=1.0, epochs=0)


def test_step_lr_values() -> None:
    # CU-Net: 1e-3, x0.1 every 10 epochs, floor 1e-7.
    assert step_lr(0, base_lr=1e-3) == pytest.approx(1e-3)
    assert step_lr(9.99, base_lr=1e-3) == pytest.approx(1e-3)
    assert step_lr(10, base_lr=1e-3) == pytest.approx(1e-4)
    assert step_lr(25, base_lr=1e-3) == pytest.approx(1e-5)
    assert step_lr(40, base_lr=1e-3) == pytest.approx(1e-7)
    assert step_lr(50, base_lr=1e-3) == pytest.approx(1e-7)  # 1e-8 floored
    assert step_lr(200, base_lr=1e-3) == pytest.approx(1e-7)


def test_aux_weight_decay_and_floor() -> None:
    assert aux_weight_at(0, PAPER) == pytest.approx(0.1)
    assert aux_weight_at(9.5, PAPER) == pytest.approx(0.1)
    assert aux_weight_at(10, PAPER) == pytest.approx(0.01)
    assert aux_weight_at(19, PAPER) == pytest.approx(0.01)
    assert aux_weight_at(20, PAPER) == pytest.approx(1e-3)
    assert aux_weight_at(30, PAPER) == pytest.approx(1e-3)  # 1e-4 floored
    assert aux_weight_at(100, PAPER) == pytest.approx(1e-3)
    halving = LossConfig(aux_weight=0.5, aux_decay=0.5, aux_decay_every=5, aux_min=0.0)
    assert aux_weight_at(5, halving) == pytest.approx(0.25)


def test_lr_at_dispatch() -> None:
    poly = OptimConfig(lr=1.0, schedule="poly", warmup_epochs=5, poly_power=0.9)
    assert lr_at(7, poly, 10) == pytest.approx(0.3**0.9)
    assert lr_at(10, poly, 10) == 0.0
    floored = OptimConfig(lr=1.0, schedule="poly", min_lr=0.01)
    assert lr_at(10, floored, 10) == pytest.approx(0.01)
    step = OptimConfig(lr=1e-3, schedule="step", step_every=10, step_gamma=0.1, min_lr=1e-7)
    assert lr_at(15, step, 50) == pytest.approx(1e-4)
    assert lr_at(45, step, 50) == pytest.approx(1e-7)
    constant = OptimConfig(lr=3e-4, schedule="constant")
    assert lr_at(123, constant, 10) == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="schedule"):
        lr_at(0, OptimConfig(schedule="cosine"), 10)
    with pytest.raises(ConfigError, match="epochs"):
        lr_at(0, poly, 0)
