"""The fast paths of the metrics give the values of the plain ones (spread-out lesions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from cascadeseg.bench.inputs import make_lesion_benchmark_case
from cascadeseg.evaluation import metrics, surface


@pytest.mark.parametrize("shape", [(5, 6, 7), (1, 4, 4), (3, 1, 2), (9, 8)])
def test_erode_cross_equals_scipy(shape):
    rng = np.random.default_rng(len(shape))
    mask = rng.random(shape) > 0.2
    cross = ndimage.generate_binary_structure(len(shape), 1)
    assert np.array_equal(surface.erode_cross(mask), ndimage.binary_erosion(mask, cross))


def _both_paths(monkeypatch, pred, ref, spacing):
    monkeypatch.setattr(surface, "_KDTREE_RATIO", 10**12)  # distance transforms on the box
    dense = metrics.case_metrics(pred, ref, spacing)
    monkeypatch.setattr(surface, "_KDTREE_RATIO", 0)  # sparse borders and k-d trees
    sparse = metrics.case_metrics(pred, ref, spacing)
    return dense, sparse


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 1.2, 2.0)])
def test_sparse_hd95_equals_distance_transforms(monkeypatch, spacing):
    pred, ref = make_lesion_benchmark_case(1, (96, 90, 64), n_lesions=6)
    dense, sparse = _both_paths(monkeypatch, pred, ref, spacing)
    for key, value in dense.items():
        assert sparse[key] == pytest.approx(value, abs=1e-9) or math.isnan(value)


def test_sparse_hd95_at_the_edge_of_the_grid(monkeypatch):
    rng = np.random.default_rng(1)
    shape = (20, 18, 16)
    pred = ((rng.random(shape) < 0.08) * rng.integers(1, 4, shape)).astype(np.uint8)
    ref = ((rng.random(shape) < 0.08) * rng.integers(1, 4, shape)).astype(np.uint8)
    dense, sparse = _both_paths(monkeypatch, pred, ref, (1.0, 2.0, 0.5))
    assert sparse == pytest.approx(dense, nan_ok=True)
    monkeypatch.setattr(surface, "_KDTREE_RATIO", 0)
    p, r = pred > 0, ref > 0
    to_ref, to_pred = surface.surface_distances(p, r, (1.0, 2.0, 0.5))
    monkeypatch.setattr(surface, "_KDTREE_RATIO", 10**12)
    e_ref, e_pred = surface.surface_distances(p, r, (1.0, 2.0, 0.5))
    assert np.allclose(np.sort(to_ref), np.sort(e_ref)) and np.allclose(
        np.sort(to_pred), np.sort(e_pred)
    )
