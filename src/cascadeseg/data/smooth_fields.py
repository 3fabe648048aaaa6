"""Smooth random fields: cubic B-spline control grids upsampled by matrix products.

Made on a coarse grid of Gaussian control points and upsampled by tensor products of 1D cubic
B-spline matrices (BLAS), not by filtering the full volume. The synthetic generator's bias fields,
lobulated tumour outlines and vessels (:mod:`cascadeseg.data.synth`) and the bias-field
augmentation (:func:`cascadeseg.data.augment.draw_bias_field`) draw them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bspline_matrix(n_fine: int, n_coarse: int) -> np.ndarray:
    """Cubic B-spline upsampling matrix ``(n_fine, n_coarse)`` (float32).

    Row ``i`` holds the weights of the ``n_coarse`` control points at fine sample ``i``; the fine
    samples span the valid range of the spline (``n_coarse >= 4``). Rows sum to 1.
    """
    if n_coarse < 4:
        raise ValueError("a cubic B-spline needs at least 4 control points")
    t = np.linspace(0.0, n_coarse - 3.0, n_fine, endpoint=False) + 0.5 * (n_coarse - 3.0) / n_fine
    base = np.minimum(np.floor(t).astype(np.int64), n_coarse - 4)
    u = t - base
    weights = np.stack(
        [
            (1 - u) ** 3 / 6,
            (3 * u**3 - 6 * u**2 + 4) / 6,
            (-3 * u**3 + 3 * u**2 + 3 * u + 1) / 6,
            u**3 / 6,
        ],
        axis=1,
    )
    matrix = np.zeros((n_fine, n_coarse), dtype=np.float32)
    rows = np.arange(n_fine)
    for k in range(4):
        matrix[rows, base + k] = weights[:, k]
    return matrix


def upsample_coarse(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Smooth upsampling of a coarse 3D grid of control points to ``shape`` (cubic B-spline).

    Args:
        coarse: ``(C, a, b, c)`` or ``(a, b, c)`` control points (each side >= 4).
        shape: fine spatial shape ``(X, Y, Z)``.

    Returns:
        float32 ``(C, X, Y, Z)`` (or ``(X, Y, Z)``): a C2-smooth field, three matrix products.
    """
    squeeze = coarse.ndim == 3
    grid = (coarse[None] if squeeze else coarse).astype(np.float32)
    mx, my, mz = (bspline_matrix(n, m) for n, m in zip(shape, grid.shape[1:]))
    nx, ny, nz = shape
    out = np.empty((grid.shape[0], nx, ny, nz), dtype=np.float32)
    for c in range(grid.shape[0]):
        # Small (a, Y, Z) first, then one BLAS product writes the big array contiguously.
        small = np.einsum("yb,abc,zc->ayz", my, grid[c], mz, optimize=True)
        np.matmul(mx, small.reshape(small.shape[0], -1), out=out[c].reshape(nx, ny * nz))
    return out[0] if squeeze else out


def smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], spacing: float, channels: int = 0
) -> np.ndarray:
    """Smooth random field with unit standard deviation (about) and feature size ``spacing``.

    Args:
        rng: random generator.
        shape: spatial shape (voxels).
        spacing: distance between control points (voxels); larger is smoother.
        channels: 0 for one ``shape`` field, else ``(channels, *shape)`` independent fields.
    """
    coarse_shape = [max(4, math.ceil(n / max(spacing, 1e-3)) + 3) for n in shape]
    n = max(channels, 1)
    coarse = rng.standard_normal((n, *coarse_shape)).astype(np.float32)
    # A cubic B-spline of iid unit control points has std sqrt(sum w^2) = 0.68..0.71 per axis
    # (measured 0.33 in 3D); dividing by 0.33 gives a field of about unit std everywhere.
    field_ = upsample_coarse(coarse, shape) / np.float32(0.33)
    return field_ if channels else field_[0]
