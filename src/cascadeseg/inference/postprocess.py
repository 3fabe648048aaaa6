"""Post-processing of label maps (pure functions; tuned by :mod:`cascadeseg.inference.tuning`).

* :func:`postprocess_et`: two-stage paper, sec. 3.4, "we replace enhancing tumor with necrosis when
  the volume of predicted enhancing tumor is less than the threshold". A case without ET in its
  reference scores ET Dice 0 for any false-positive ET voxel but 1 for an empty prediction (BraTS
  convention), so removing small ET predictions pays off on such cases.
* :func:`cascadeseg.inference.tuning.tune_et_threshold`: "the threshold is chosen for each
  experiment independently": the candidate with the best mean ET Dice over validation cases.
* :func:`fuse_brain_mask`: CU-Net paper, sec. 2.2, "we extract the non-brain mask in advance and
  fuse it with the outputs of branch1 and branch2": no tumour outside the brain.
* Lesion-aware post-processing (:mod:`cascadeseg.inference.lesion_postprocess`): predicted
  connected components below a per-region size are removed, thresholds tuned for the lesion-wise
  Dice of the BraTS ranking.
"""

from __future__ import annotations

import numpy as np

from cascadeseg.data.labels import ET, NCR


def postprocess_et(label: np.ndarray, et_min_voxels: int) -> np.ndarray:
    """Replace enhancing tumour by necrosis when the predicted ET volume is below a threshold.

    Two-stage paper, sec. 3.4. The whole ET of the case is relabelled (not per component), so WT
    and TC are unchanged and only ET moves.

    Args:
        label: ``(X, Y, Z)`` internal label map (0 background, 1 NCR, 2 ED, 3 ET).
        et_min_voxels: ET volumes with fewer voxels than this become NCR; ``<= 0`` disables.

    Returns:
        A new ``(X, Y, Z)`` label map of the same dtype (the input is not modified).
    """
    out = np.array(label, copy=True)
    if et_min_voxels <= 0:
        return out
    et = out == ET
    count = int(np.count_nonzero(et))
    if 0 < count < et_min_voxels:
        out[et] = NCR
    return out


def fuse_brain_mask(probabilities: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """Zero the region probabilities outside the brain (CU-Net paper, sec. 2.2, testing).

    Args:
        probabilities: ``(3, X, Y, Z)`` region probabilities ``[WT, TC, ET]``.
        brain_mask: ``(X, Y, Z)`` bool, True inside the brain.

    Returns:
        ``(3, X, Y, Z)`` float32 probabilities, 0 outside the brain.
    """
    return np.where(brain_mask[None], probabilities, 0.0).astype(np.float32, copy=False)
