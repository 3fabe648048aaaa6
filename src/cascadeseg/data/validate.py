"""Checks that turn bad input into one clear line instead of a traceback or a silent guess.

Every check raises :class:`~cascadeseg.errors.InputError` with a one-line message that starts with
the file (or folder) at fault and says what is wrong with it. The readers in
:mod:`cascadeseg.data.layouts` call the file-level checks while loading (before arrays of different
shapes are stacked) and :func:`validate_case` once on the assembled :class:`Case`.

Checked: affines that are not finite, not invertible or have a zero voxel spacing
(:func:`check_affine`, called on every file's header by :func:`cascadeseg.data.nifti.read_header`),
modalities of different shapes or affines (compared on the headers, before any voxel data is
read), a 4D file with the wrong number of channels, a label map whose shape or affine differs
from the images, label values outside the convention
(:func:`cascadeseg.data.labels.to_internal`), non-finite voxels and an all-zero modality.
:func:`warn_if_wrapped` logs a warning (it does not raise) for an integer MR image whose negative
values look like int16 wrap-around. Missing or duplicated files and empty folders are the
discovery's to report (:mod:`cascadeseg.data.layouts.base`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.labels import NUM_CLASSES
from cascadeseg.errors import InputError

#: Largest difference (mm) tolerated between the affines of co-registered files. Real BraTS files
#: differ by float rounding (~1e-6 mm) between modalities; 1e-3 mm is nnU-Net's order of tolerance
#: for "same geometry" and far below a voxel.
AFFINE_ATOL_MM = 1e-3

#: Smallest ``|det|`` of an affine's 3x3 part relative to the product of its column norms (the
#: volume of the voxel over that of a box with the same edges): below it the axes are (nearly)
#: parallel and the affine has no usable inverse.
MIN_AFFINE_ORTHOGONALITY = 1e-6

#: An integer MR image with a voxel at or below this value is taken for int16 wrap-around
#: (unsigned values above 32767 stored as signed int16 become -32768..-1).
WRAPAROUND_MIN = -16384
#: ... or with more than this fraction of its non-zero voxels below ``WRAPAROUND_NEGATIVE``.
WRAPAROUND_FRACTION = 0.01
WRAPAROUND_NEGATIVE = -1000

logger = logging.getLogger("cascadeseg.data")

PathLike = str | os.PathLike[str]


def check_affine(affine: np.ndarray, path: PathLike) -> None:
    """Require a usable voxel-to-world affine: finite, invertible, every voxel spacing > 0.

    The one check every reader goes through (:func:`cascadeseg.data.nifti.read_header`,
    :func:`validate_case`).

    Args:
        affine: ``(4, 4)`` matrix (mm).
        path: the file (or case) named in the message.

    Raises:
        InputError: ``"<path>: affine is not finite ..."``, ``"... has a zero voxel spacing on
            axis 2 ..."`` or ``"... is not invertible ..."``.
    """
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise InputError(f"{path}: affine of shape {matrix.shape}, expected (4, 4)")
    if not np.isfinite(matrix).all():
        raise InputError(
            f"{path}: affine is not finite (NaN or infinity in the sform/qform): the voxel grid "
            f"has no position in space"
        )
    linear = matrix[:3, :3]
    spacing = np.sqrt((linear**2).sum(axis=0))
    for axis, value in enumerate(spacing):
        if not value > 0:
            raise InputError(
                f"{path}: affine has a zero voxel spacing on axis {axis} (spacing "
                f"{', '.join(f'{s:g}' for s in spacing)} mm): the file's geometry is broken"
            )
    if abs(float(np.linalg.det(linear))) <= MIN_AFFINE_ORTHOGONALITY * float(np.prod(spacing)):
        raise InputError(
            f"{path}: affine is not invertible (its voxel axes are parallel): the file's geometry "
            f"is broken"
        )


def volume_shape(shape: Sequence[int], path: PathLike, *, what: str = "image") -> tuple[int, ...]:
    """The 3D shape ``(X, Y, Z)`` a file of ``shape`` gives (see :func:`as_volume`).

    Raises:
        InputError: the shape is 4D with more than one channel, or not 3D at all.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4 and shape[3] == 1:
        return shape[:3]
    if len(shape) == 4:
        raise InputError(
            f"{path}: 4D file with {shape[3]} channels where one 3D {what} was expected"
        )
    if len(shape) != 3:
        raise InputError(f"{path}: {len(shape)}D {what} of shape {shape}, expected 3D")
    return shape


def check_same_geometry(
    reference: PathLike,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
    path: PathLike,
    shape: Sequence[int],
    affine: np.ndarray,
    *,
    what: str = "image",
    atol_mm: float = AFFINE_ATOL_MM,
) -> None:
    """Require ``path`` to share the voxel grid of ``reference``.

    Args:
        reference: the file whose grid is the reference (named in the message).
        reference_shape, reference_affine: its spatial shape (voxels) and ``(4, 4)`` affine (mm).
        path, shape, affine: the file to check.
        what: ``"image"`` or ``"label map"``, for the message.
        atol_mm: largest tolerated absolute difference of any affine entry (mm).

    Raises:
        InputError: ``"<path>: <what> shape (...) differs from (...) of <reference>"`` or the same
            for the affine, with the largest difference in mm.
    """
    if tuple(shape) != tuple(reference_shape):
        raise InputError(
            f"{path}: {what} shape {tuple(int(s) for s in shape)} differs from "
            f"{tuple(int(s) for s in reference_shape)} of {os.path.basename(reference)}"
        )
    for name, matrix in ((path, affine), (reference, reference_affine)):
        if not np.isfinite(np.asarray(matrix, dtype=np.float64)).all():
            raise InputError(f"{name}: affine is not finite (NaN or infinity in the sform/qform)")
    diff = float(np.max(np.abs(np.asarray(affine) - np.asarray(reference_affine))))
    if not diff <= atol_mm:
        raise InputError(
            f"{path}: {what} affine differs from that of {os.path.basename(reference)} by "
            f"{diff:.4g} mm (tolerance {atol_mm:g} mm): the files are not on the same voxel grid"
        )


def as_volume(array: np.ndarray, path: PathLike, *, what: str = "image") -> np.ndarray:
    """Return a 3D ``(X, Y, Z)`` view of ``array``.

    A trailing axis of length 1 (``(X, Y, Z, 1)``, which some tools write) is dropped.

    Raises:
        InputError: the file is 4D with more than one channel, or not 3D at all.
    """
    volume_shape(array.shape, path, what=what)
    return array[..., 0] if array.ndim == 4 else array


def check_channel_count(
    path: PathLike, shape: Sequence[int], expected: int = len(MODALITIES)
) -> None:
    """Require a 4D ``(X, Y, Z, C)`` image with ``C == expected`` channels (MSD layout).

    Raises:
        InputError: ``"<path>: 4D image has 3 channels, expected 4 (...)"`` or ``"... is 3D"``.
    """
    if len(shape) != 4:
        raise InputError(
            f"{path}: {len(shape)}D image of shape {tuple(shape)}, expected a 4D image with "
            f"{expected} channels (FLAIR, T1, T1ce, T2)"
        )
    if shape[3] != expected:
        raise InputError(
            f"{path}: 4D image has {shape[3]} channels, expected {expected} (FLAIR, T1, T1ce, T2)"
        )


def _channel_source(case: Case, channel: int, source: PathLike | None) -> str:
    files = case.meta.files
    modality = MODALITIES[channel]
    if modality in files:
        return str(files[modality])
    if "image" in files:
        return f"{files['image']} (channel {modality})"
    return f"{source or case.case_id} ({modality})"


def warn_if_wrapped(array: np.ndarray, name: str) -> bool:
    """Log a warning when an integer MR image looks like int16 wrap-around; return whether it did.

    MR magnitudes are not negative. Unsigned values above 32767 written as int16 wrap to
    -32768..-1: the image then has voxels near -32768, or a large share of strongly negative
    voxels. A few small negatives (interpolation) are left alone.

    Args:
        array: the stored values of one modality (any shape); float arrays are not checked.
        name: the file (and channel) named in the warning.
    """
    if array.dtype.kind != "i" or array.size == 0:
        return False
    lowest = int(array.min())
    if lowest >= WRAPAROUND_NEGATIVE:
        return False
    strongly_negative = int(np.count_nonzero(array < WRAPAROUND_NEGATIVE))
    nonzero = max(1, int(np.count_nonzero(array)))
    if lowest > WRAPAROUND_MIN and strongly_negative <= WRAPAROUND_FRACTION * nonzero:
        return False
    logger.warning(
        "%s: warning: %d voxel(s) below %d (lowest %d) in an integer MR image: probably int16 "
        "wrap-around (unsigned values above 32767 stored as signed); check how the file was "
        "converted",
        name,
        strongly_negative,
        WRAPAROUND_NEGATIVE,
        lowest,
    )
    return True


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise if ``array`` holds NaN or infinite values (message gives their count)."""
    if array.dtype.kind != "f":
        return
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise InputError(f"{name}: {bad} non-finite voxels (NaN or infinity)")


def check_not_empty(array: np.ndarray, name: str) -> None:
    """Raise if every voxel of ``array`` is zero (an empty or blanked modality)."""
    if not array.any():
        raise InputError(f"{name}: modality is empty (every voxel is zero)")


def validate_case(case: Case, *, source: PathLike | None = None) -> None:
    """Check an assembled case; raise :class:`InputError` on the first problem.

    Args:
        case: image ``(4, X, Y, Z)`` float, label ``(X, Y, Z)`` internal values or ``None``.
        source: what to name when ``case.meta.files`` does not say (e.g. a folder).

    Raises:
        InputError: wrong image rank or channel count, shape not matching ``meta.shape``,
            non-finite voxels, an all-zero modality (not in ``case.missing``), label shape
            differing from the image, internal label values outside 0-3. The message names the
            file at fault.
    """
    first = next((case.meta.files[m] for m in MODALITIES if m in case.meta.files), None)
    where = str(source or first or case.meta.files.get("image") or case.case_id)
    check_affine(case.meta.affine, where)
    image = case.image
    if image.ndim != 4 or image.shape[0] != len(MODALITIES):
        raise InputError(
            f"{where}: image of shape {image.shape}, expected (4, X, Y, Z) with channels "
            f"FLAIR, T1, T1ce, T2"
        )
    if tuple(image.shape[1:]) != tuple(case.meta.shape):
        raise InputError(
            f"{where}: image shape {image.shape[1:]} differs from meta.shape {case.meta.shape}"
        )
    for channel in range(image.shape[0]):
        name = _channel_source(case, channel, source)
        check_finite(image[channel], name)
        if MODALITIES[channel] not in case.missing:  # a missing sequence is zero-filled
            check_not_empty(image[channel], name)
    if case.label is not None:
        seg = str(case.meta.files.get("seg", where))
        label = case.label
        if tuple(label.shape) != tuple(image.shape[1:]):
            raise InputError(
                f"{seg}: label shape {tuple(label.shape)} differs from image shape "
                f"{tuple(image.shape[1:])}"
            )
        if label.dtype.kind not in "iub":
            raise InputError(f"{seg}: label map must be integer, got {label.dtype}")
        if label.size and (int(label.max()) >= NUM_CLASSES or int(label.min()) < 0):
            bad = np.unique(label[(label < 0) | (label >= NUM_CLASSES)])[:10]
            raise InputError(f"{seg}: internal label values {bad.tolist()} outside 0-3")
