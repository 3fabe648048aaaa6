"""Case balance over tumour compositions (data.case_balance)."""

from __future__ import annotations

import numpy as np
import pytest

from cascadeseg.data.case_balance import (
    balanced_case_weights,
    composition,
    composition_shares,
    draw_case,
)


def test_composition_lists_present_tumour_labels() -> None:
    label = np.zeros((4, 4, 4), np.uint8)
    assert composition(label) == ()
    label[0, 0, 0], label[1, 1, 1] = 2, 1
    assert composition(label) == (1, 2)


def test_power_one_gives_each_composition_an_equal_share() -> None:
    comps = [(1, 2, 3)] * 6 + [(1, 2)] * 2 + [(2, 3)]
    weights = balanced_case_weights(comps, 1.0)
    shares = composition_shares(comps, weights)
    assert {c: n for c, (n, _) in shares.items()} == {(1, 2, 3): 6, (1, 2): 2, (2, 3): 1}
    for _, share in shares.values():
        assert share == pytest.approx(1 / 3)


def test_power_zero_is_uniform_and_half_is_between() -> None:
    comps = [(1, 2, 3)] * 8 + [(1, 2)] * 2
    assert np.allclose(balanced_case_weights(comps, 0.0), 0.1)
    rare = composition_shares(comps, balanced_case_weights(comps, 0.5))[(1, 2)][1]
    assert 0.2 < rare < 0.5  # uniform 0.2, equal shares 0.5
    with pytest.raises(ValueError, match="power"):
        balanced_case_weights(comps, 1.5)


def test_draws_follow_the_weights_and_repeat_per_seed() -> None:
    weights = np.array([0.7, 0.1, 0.2])
    draws = [draw_case(3, 1, i, 3, weights) for i in range(3000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.allclose(freq, weights, atol=0.03)
    assert draws == [draw_case(3, 1, i, 3, weights) for i in range(3000)]
    assert draws != [draw_case(3, 2, i, 3, weights) for i in range(3000)]
    assert [draw_case(0, 0, i, 3, None) for i in range(5)] == [0, 1, 2, 0, 1]
