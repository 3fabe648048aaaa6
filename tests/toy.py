"""Tiny cases for the tests (no template; in memory, or written as a small dataset).

:func:`make_tiny_case` draws an ellipsoidal "brain" with a nested tumour (edema around a core of
necrosis with an enhancing rim) in a few milliseconds. It is *not* the synthetic BraTS generator
(``cascadeseg.data.synth``), which builds full-size cases on real anatomy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cascadeseg.data.case import Case, Meta
from cascadeseg.data.labels import ED, ET, NCR
from cascadeseg.data.synth_config import brats_affine
from cascadeseg.data.writers import write_case


def make_tiny_case(
    shape: tuple[int, int, int] = (32, 32, 24),
    *,
    seed: int = 0,
    case_id: str = "toy_000",
    with_et: bool = True,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Case:
    """A small case with brain, edema, necrosis and (optionally) enhancing tumour.

    Args:
        shape: spatial shape ``(X, Y, Z)`` in voxels (each side >= 12).
        seed: seed of the random placement and noise.
        case_id: the case id.
        with_et: draw an enhancing rim (``False`` gives a case without ET).
        spacing: voxel size in mm, written into the affine.

    Returns:
        A :class:`Case` with float32 image ``(4, X, Y, Z)`` (background exactly 0) and an internal
        label map; ``meta.source_layout == "synthetic"``.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
    radii = np.array(shape, dtype=np.float32)[:, None, None, None] * 0.42
    brain = (((grid - centre) / radii) ** 2).sum(0) <= 1.0

    t_centre = (
        centre + rng.uniform(-0.12, 0.12, size=(3, 1, 1, 1)) * np.array(shape)[:, None, None, None]
    )
    r_t = min(shape) * rng.uniform(0.18, 0.24)
    dist = np.sqrt(((grid - t_centre) ** 2).sum(0))
    label = np.zeros(shape, dtype=np.uint8)
    label[(dist <= r_t) & brain] = ED
    label[(dist <= r_t * 0.6) & brain] = ET if with_et else NCR
    label[(dist <= r_t * 0.4) & brain] = NCR

    # Mean intensity per internal label (healthy brain, NCR, ED, ET) of FLAIR, T1, T1ce, T2.
    means = np.array(
        [[300, 450, 600, 500], [500, 250, 380, 400], [450, 220, 400, 900], [350, 800, 700, 600]],
        dtype=np.float32,
    )
    image = np.zeros((4, *shape), dtype=np.float32)
    for c in range(4):
        vol = means[c][label] + rng.normal(0, 20, size=shape).astype(np.float32)
        image[c] = np.where(brain, np.maximum(vol, 1.0), 0.0)
    affine = brats_affine(shape) @ np.diag([*spacing, 1.0])
    meta = Meta(
        case_id=case_id,
        affine=affine,
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        source_layout="synthetic",
        label_convention="brats2021",
    )
    return Case(image=image, label=label, meta=meta)


def write_tiny_dataset(root: Path, n: int = 2, shape: tuple[int, int, int] = (24, 24, 16)) -> Path:
    """``n`` tiny cases (seeds ``0..n-1``, ids ``BraTS2021_00000``, ...) written in the BraTS 2021
    layout below ``root``; returns ``root``."""
    for i in range(n):
        write_case(make_tiny_case(shape, seed=i, case_id=f"BraTS2021_{i:05d}"), root, "brats2021")
    return root


def label_with_et(n_et: int) -> np.ndarray:
    """``(4, 4, 4)`` uint8 label map: edema in the first x-slice, then its first ``n_et`` voxels
    (C order) enhancing tumour."""
    label = np.zeros((4, 4, 4), dtype=np.uint8)
    label[0] = ED
    label.reshape(-1)[:n_et] = ET
    return label
