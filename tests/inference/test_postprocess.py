"""ET post-processing (two-stage paper, sec. 3.4) and the brain-mask fusion (CU-Net sec. 2.2)."""

from __future__ import annotations

import numpy as np
import pytest

from cascadeseg.data.labels import ET, NCR
from cascadeseg.inference.postprocess import fuse_brain_mask, postprocess_et
from toy import label_with_et


def test_small_et_becomes_necrosis() -> None:
    label = label_with_et(5)
    out = postprocess_et(label, 10)
    assert not np.any(out == ET)
    assert np.count_nonzero(out == NCR) == 5
    # only ET moved: everything else unchanged, input untouched
    assert np.array_equal(out[label != ET], label[label != ET])
    assert np.count_nonzero(label == ET) == 5


def test_threshold_is_strict_and_zero_disables() -> None:
    label = label_with_et(5)
    assert np.array_equal(postprocess_et(label, 5), label)  # 5 is not below 5
    assert np.array_equal(postprocess_et(label, 0), label)
    assert np.array_equal(postprocess_et(label_with_et(0), 100), label_with_et(0))


def test_fuse_brain_mask_zeroes_outside() -> None:
    probs = np.full((3, 2, 2, 1), 0.8, np.float32)
    mask = np.array([[True, False], [False, True]])[..., None]
    out = fuse_brain_mask(probs, mask)
    assert out[:, 0, 0, 0].tolist() == pytest.approx([0.8] * 3)
    assert out[:, 0, 1, 0].tolist() == [0.0, 0.0, 0.0]
