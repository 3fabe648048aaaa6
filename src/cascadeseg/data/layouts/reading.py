"""Reading one discovered case, whatever its layout, into the :class:`~cascadeseg.data.case.Case`
contract.

Headers first: every file's header is read and the headers of a case compared with each other
(shape, affine), then checked against the voxel cap and the file sizes, before any voxel data is
decompressed. Then the images are read into one float32 ``(4, X, Y, Z)`` array in the order
FLAIR, T1, T1ce, T2, the label map converted to the internal convention, and the case validated.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cascadeseg.data.case import MODALITIES, Case, Meta
from cascadeseg.data.labels import to_internal
from cascadeseg.data.layouts.base import CaseRef, check_ref
from cascadeseg.data.nifti import NiftiInfo, check_limits, load_nifti, read_header
from cascadeseg.data.validate import (
    as_volume,
    check_channel_count,
    check_same_geometry,
    validate_case,
    volume_shape,
    warn_if_wrapped,
)


def _read_headers(ref: CaseRef) -> dict[str, NiftiInfo]:
    """Read and compare the headers of every file of ``ref`` before any voxel data.

    Each header is checked against its file (:func:`cascadeseg.data.nifti.read_header`: affine,
    voxel cap, size); then shapes and affines are compared across the case, so that a file whose
    header disagrees with its siblings (a gzip bomb with a consistent header included) is rejected
    before anything is decompressed.

    Returns:
        The :class:`NiftiInfo` of each file, by the keys of ``ref.files``, with its limits
        checked (:func:`cascadeseg.data.nifti.check_limits`).
    """
    # Headers only; the voxel cap and the size checks come after the comparison, so a gzip bomb
    # whose (consistent) header disagrees with its siblings is reported as "shape differs".
    infos = {key: read_header(path, limits=False) for key, path in ref.files.items()}
    if "image" in infos:
        reference = infos["image"]
        check_channel_count(reference.path, reference.shape)
        grid = reference.shape[:3]
    else:
        present = [m for m in MODALITIES if m in infos]
        reference = infos[present[0]]
        grid = volume_shape(reference.shape, reference.path)
        for modality in present[1:]:
            info = infos[modality]
            shape = volume_shape(info.shape, info.path)
            check_same_geometry(
                reference.path, grid, reference.affine, info.path, shape, info.affine
            )
    if "seg" in infos:
        seg = infos["seg"]
        shape = volume_shape(seg.shape, seg.path, what="label map")
        check_same_geometry(
            reference.path, grid, reference.affine, seg.path, shape, seg.affine, what="label map"
        )
    for info in infos.values():
        check_limits(info)
    return infos


def _read_4d(info: NiftiInfo, ref: CaseRef) -> tuple[np.ndarray, np.ndarray, Any]:
    path = info.path
    data, affine, header = load_nifti(path, info=info)  # stored dtype; cast while copying below
    channels = ref.extra.get("channels") or {m: i for i, m in enumerate(MODALITIES)}
    image = np.empty((len(MODALITIES), *data.shape[:3]), dtype=np.float32)
    for c, modality in enumerate(MODALITIES):
        warn_if_wrapped(data[..., channels[modality]], f"{path} (channel {modality})")
        image[c] = data[..., channels[modality]]
    return image, affine, header


def _read_3d(infos: dict[str, NiftiInfo]) -> tuple[np.ndarray, np.ndarray, Any]:
    """The ``(4, X, Y, Z)`` image of one file per modality (a modality without a file stays
    zero), the affine and the header of the first file."""
    first = next(infos[m] for m in MODALITIES if m in infos)
    image = np.zeros((len(MODALITIES), *first.shape[:3]), dtype=np.float32)
    header = None
    for c, modality in enumerate(MODALITIES):
        info = infos.get(modality)
        if info is None:
            continue
        # Stored values (int16 for BraTS): the cast to float32 happens in the copy below, in one
        # pass with the reordering from the file's Fortran order (measured ~2x faster than
        # converting first).
        data, _, file_header = load_nifti(info.path, info=info)
        data = as_volume(data, info.path)
        warn_if_wrapped(data, str(info.path))
        if header is None:
            header = file_header
        image[c] = data
        del data
    return image, first.affine.copy(), header


def _read_label(ref: CaseRef, info: NiftiInfo) -> np.ndarray:
    raw, _, _ = load_nifti(info.path, info=info)
    raw = as_volume(raw, info.path, what="label map")
    return to_internal(raw, ref.label_convention, source=str(info.path))


def read_case(ref: CaseRef, *, allow_missing: bool = False) -> Case:
    """Load, convert and validate one case.

    Args:
        ref: the case's files (:func:`cascadeseg.data.layouts.discover_cases`).
        allow_missing: read a case that lacks some of the four modality files (for models
            trained with sequence dropout, :mod:`cascadeseg.data.missing`): their channels are
            zeros and ``Case.missing`` names them. Without it such a case raises, as any
            missing file does.

    Returns:
        A :class:`Case`: float32 image ``(4, X, Y, Z)`` in the order FLAIR, T1, T1ce, T2, uint8
        internal label map ``(X, Y, Z)`` (or ``None`` without ``seg``), and :class:`Meta` with the
        affine, spacing (mm, from the affine's column norms), shape, header of the first image,
        ``ref.layout`` and ``ref.label_convention``.

    Raises:
        InputError: missing/duplicated files, unreadable files, a header that fails
            :func:`cascadeseg.data.nifti.read_header`'s checks (affine, voxel cap, file size),
            shapes or affines that differ (compared on the headers, before any voxel data is
            read), a 4D file with the wrong channel count, label values outside the convention,
            non-finite voxels, an all-zero modality (see :mod:`cascadeseg.data.validate`).
    """
    check_ref(ref, allow_missing=allow_missing)
    infos = _read_headers(ref)
    if "image" in ref.files:
        image, affine, header = _read_4d(infos["image"], ref)
    else:
        image, affine, header = _read_3d(infos)
    label = _read_label(ref, infos["seg"]) if "seg" in ref.files else None
    meta = Meta(
        case_id=ref.case_id,
        affine=affine,
        spacing=tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))),  # type: ignore[arg-type]
        shape=tuple(int(s) for s in image.shape[1:]),  # type: ignore[arg-type]
        source_layout=ref.layout,
        label_convention=ref.label_convention,
        header=header,
        files=dict(ref.files),
        extra={k: v for k, v in ref.extra.items() if k not in ("problems", "missing")},
    )
    missing = tuple(m for m in MODALITIES if "image" not in ref.files and m not in ref.files)
    case = Case(image=image, label=label, meta=meta, missing=missing)
    validate_case(case)
    return case
