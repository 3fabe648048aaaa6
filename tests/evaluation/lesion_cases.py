"""Generated multi-lesion (reference, prediction) label maps for the lesion-wise metric tests.

Internal labels (1 NCR, 2 ED, 3 ET; the BraTS 2023 values). Each case mixes the situations the
lesion-wise rules treat differently: several tumours, satellites a few voxels from a tumour (inside
the BraTS 2023 dilation reach), specks under the size threshold, a predicted tumour split in two,
false positives far from every tumour, missed lesions, and regions left empty.
"""

from __future__ import annotations

import numpy as np

SHAPE = (64, 64, 48)


def _ball(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    return np.asarray(dist <= 1.0)


def _tumour(label: np.ndarray, rng: np.random.Generator, centre: np.ndarray, size: float) -> None:
    """Paint an edema ellipsoid with a necrotic core and (mostly) an enhancing rim."""
    radii = size * rng.uniform(0.7, 1.3, 3)
    label[_ball(label.shape, centre, radii)] = 2
    core = _ball(label.shape, centre + rng.normal(0, 0.5, 3), radii * 0.6)
    if rng.random() < 0.8:
        label[core] = 3
        label[_ball(label.shape, centre, radii * 0.35)] = 1
    else:
        label[core] = 1


def make_lesion_case(
    seed: int, shape: tuple[int, int, int] = SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(reference, prediction)`` pair of uint8 label maps of ``shape``."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.uint8)
    lo, hi = np.array([8, 8, 8]), np.array(shape) - 8
    centres = [rng.uniform(lo, hi) for _ in range(int(rng.integers(1, 4)))]
    for centre in centres:
        size = rng.uniform(3.0, 7.0)
        sub = np.zeros(shape, dtype=np.uint8)
        _tumour(sub, rng, centre, size)
        ref = np.maximum(ref, sub)
        fate = rng.random()
        if fate < 0.15:
            continue  # missed tumour
        moved = np.roll(sub, tuple(rng.integers(-1, 2, 3)), axis=(0, 1, 2))
        if fate < 0.35:  # predicted in two pieces
            axis = int(rng.integers(0, 3))
            cut = round(float(centre[axis]))
            index = [slice(None)] * 3
            index[axis] = slice(max(cut - 1, 0), cut + 1)
            moved[tuple(index)] = 0
        pred = np.maximum(pred, moved)
        if rng.random() < 0.5:  # a satellite 2-4 voxels beyond the tumour's edge
            offset = rng.normal(0, 1, 3)
            offset *= (size * 1.3 + rng.uniform(2, 4)) / np.linalg.norm(offset)
            sat = _ball(shape, np.clip(centre + offset, 2, np.array(shape) - 3), np.full(3, 1.6))
            ref[sat & (ref == 0)] = int(rng.choice([1, 2, 3]))
            if rng.random() < 0.5:
                pred[sat & (pred == 0)] = 2
    for _ in range(int(rng.integers(0, 4))):  # specks (1-30 voxels) in either map
        where = ref if rng.random() < 0.5 else pred
        centre = rng.uniform(lo, hi)
        where[_ball(shape, centre, rng.uniform(0.5, 1.8, 3)) & (where == 0)] = int(
            rng.choice([1, 2, 3])
        )
    for _ in range(int(rng.integers(0, 3))):  # false positives far from everything
        centre = rng.uniform(lo, hi)
        blob = _ball(shape, centre, rng.uniform(1.5, 4.0, 3))
        if not (blob & (ref > 0)).any():
            pred[blob & (pred == 0)] = int(rng.choice([2, 3]))
    if rng.random() < 0.15:
        pred[pred == 3] = 1  # no enhancing tumour predicted
    if rng.random() < 0.1:
        ref[ref == 3] = 1  # no enhancing tumour in the reference
    return ref, pred
