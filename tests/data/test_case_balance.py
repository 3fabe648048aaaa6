"""Case balance over kinds of tumour (data.case_balance)."""

from __future__ import annotations

import numpy as np
import pytest

from cascadeseg.data.case_balance import (
    balanced_case_weights,
    case_kind,
    composition,
    draw_case,
    group_shares,
)


def test_composition_lists_present_tumour_labels() -> None:
    label = np.zeros((4, 4, 4), np.uint8)
    assert composition(label) == ()
    label[0, 0, 0], label[1, 1, 1] = 2, 1
    assert composition(label) == (1, 2)


def test_the_kind_is_whether_the_tumour_enhances() -> None:
    label = np.zeros((4, 4, 4), np.uint8)
    assert case_kind(label) == "no tumour"
    label[0, 0, 0] = 2
    assert case_kind(label) == "non-enhancing"  # edema alone: no enhancing tumour
    label[1, 1, 1] = 1
    assert case_kind(label) == "non-enhancing"
    label[2, 2, 2] = 3  # internal ET
    assert case_kind(label) == "enhancing"
    label[1, 1, 1] = 0  # enhancing tumour without necrosis: the same kind
    assert case_kind(label) == "enhancing"


def test_without_a_rare_kind_the_balance_is_uniform() -> None:
    """Every training case enhances (with or without necrosis): nothing to lift, so no kind of
    enhancing tumour is favoured (grouping by label sets gave the 5 cases without necrosis half
    the crops)."""
    labels = [np.array([1, 2, 3])] * 20 + [np.array([2, 3])] * 5
    kinds = [case_kind(lab) for lab in labels]
    assert np.allclose(balanced_case_weights(kinds, 1.0), 1 / 25)


def test_power_one_gives_each_composition_an_equal_share() -> None:
    comps = [(1, 2, 3)] * 6 + [(1, 2)] * 2 + [(2, 3)]
    weights = balanced_case_weights(comps, 1.0)
    shares = group_shares(comps, weights)
    assert {c: n for c, (n, _) in shares.items()} == {(1, 2, 3): 6, (1, 2): 2, (2, 3): 1}
    for _, share in shares.values():
        assert share == pytest.approx(1 / 3)


def test_power_zero_is_uniform_and_half_is_between() -> None:
    comps = [(1, 2, 3)] * 8 + [(1, 2)] * 2
    assert np.allclose(balanced_case_weights(comps, 0.0), 0.1)
    rare = group_shares(comps, balanced_case_weights(comps, 0.5))[(1, 2)][1]
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
