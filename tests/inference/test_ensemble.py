"""Averaging ensemble members: the mean and the voxel-wise variance over their passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascadeseg.inference.ensemble import MomentSum, average_probabilities


def test_average_probabilities_mean_and_variance() -> None:
    a = np.array([0.2, 1.0], np.float32)
    b = np.array([0.6, 1.0], np.float32)
    mean, var = average_probabilities([a, torch.from_numpy(b)])
    assert mean.tolist() == pytest.approx([0.4, 1.0])
    assert var.tolist() == pytest.approx([0.04, 0.0])
    mean1, var1 = average_probabilities([a])
    assert np.array_equal(mean1, a) and not var1.any()
    with pytest.raises(ValueError):
        average_probabilities([a, np.zeros(3)])


def test_moment_sum_weighs_members_equally() -> None:
    a = np.array([0.2, 1.0], np.float32)
    b = np.array([0.6, 1.0], np.float32)
    moments = MomentSum()
    moments.add(a, a * a)  # one pass each: mean of squares = square of the mean
    moments.add(b, b * b)
    mean, var = moments.result()
    expected_mean, expected_var = average_probabilities([a, b])
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-6)
    np.testing.assert_allclose(var, expected_var, atol=1e-7)
    assert a.tolist() == pytest.approx([0.2, 1.0])  # the added arrays are not changed
    with pytest.raises(ValueError):
        MomentSum().result()
