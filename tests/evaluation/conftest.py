"""Tiny label maps written with nibabel, for the evaluation's folder and exit-code tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

#: The grid of every label map here: 16^3 voxels of 1 mm, BraTS-like affine (origin 0, 239, 0).
SHAPE = (16, 16, 16)
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
AFFINE[:3, 3] = (0.0, 239.0, 0.0)


def tumour_label(offset: int = 0, *, et: int = 3) -> np.ndarray:
    """``(16, 16, 16)`` uint8 map: edema cube, necrosis and enhancing tumour inside it.

    Args:
        offset: shift of the tumour along x in voxels (0 and 8 do not overlap).
        et: the value of enhancing tumour (3 in BraTS 2023+, 4 in BraTS 2017-2021).
    """
    label = np.zeros(SHAPE, np.uint8)
    label[2 + offset : 8 + offset, 4:10, 4:10] = 2
    label[3 + offset : 7 + offset, 5:9, 5:9] = et
    label[4 + offset : 6 + offset, 6:8, 6:8] = 1
    return label


WriteLabel = Callable[..., Path]


@pytest.fixture
def write_label() -> WriteLabel:
    """``write_label(path, offset=0, et=3, empty=False)``: a :func:`tumour_label` file."""

    def write(path: Path, offset: int = 0, et: int = 3, empty: bool = False) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.zeros(SHAPE, np.uint8) if empty else tumour_label(offset, et=et)
        nib.save(nib.Nifti1Image(data, AFFINE), str(path))
        return path

    return write
