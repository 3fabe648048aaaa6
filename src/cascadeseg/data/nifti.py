"""Reading and writing single NIfTI files, with errors meant for people.

:func:`load_nifti` reads the whole voxel array eagerly, so a truncated or corrupt ``.nii.gz`` is
reported here (as an :class:`~cascadeseg.errors.InputError` naming the file) and not later, deep in
preprocessing, when nibabel's lazy proxy is first touched. :func:`save_nifti` writes to a temporary
file in the destination folder and renames it into place (``os.replace``), so a reader never sees a
half-written file, even when a run is interrupted.

Arrays are in the voxel order of the file (NIfTI's ``i, j, k[, t]``); nothing is reoriented here.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from cascadeseg.errors import InputError
from cascadeseg.fsutil import atomic_path

#: File name endings accepted as NIfTI.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")

# What nibabel, gzip and zlib raise on files that are not (whole) NIfTI images: a missing gzip
# trailer or a cut deflate stream gives EOFError/zlib.error, a short uncompressed file OSError
# ("Expected N bytes, got M"), a mangled header HeaderDataError/ValueError.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    ImageFileError,
    HeaderDataError,
    TypeError,
)


_GZIP_MAGIC = b"\x1f\x8b"


def _image_from_bytes(data: bytes, path: Path) -> nib.Nifti1Image:
    """Parse an uncompressed NIfTI-1 or NIfTI-2 byte string (header + data)."""
    if len(data) < 348:
        raise InputError(f"{path}: not a NIfTI image (only {len(data)} bytes, header needs 348)")
    sizeof_hdr = {int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")}
    klass: type[nib.Nifti1Image]
    if 348 in sizeof_hdr:
        klass = nib.Nifti1Image
    elif 540 in sizeof_hdr:
        klass = nib.Nifti2Image
    else:
        raise InputError(f"{path}: not a NIfTI image (header size field is not 348 or 540)")
    magic = data[344:348] if klass is nib.Nifti1Image else data[4:8]
    if not magic.startswith((b"n+1", b"n+2")):
        raise InputError(f"{path}: not a single-file NIfTI image (magic {magic!r})")
    return klass.from_bytes(data)


def is_nifti(path: str | os.PathLike[str]) -> bool:
    """Whether the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """``"a_flair.nii.gz" -> "a_flair"``; names without a NIfTI ending are returned unchanged."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _reason(exc: BaseException, path: Path) -> str:
    """A short, human reason for a failed read."""
    if isinstance(exc, EOFError) or "ended before the end-of-stream" in str(exc):
        return "file is truncated (compressed data ends early)"
    if isinstance(exc, zlib.error) or type(exc).__name__ == "BadGzipFile":
        return f"corrupt gzip data ({_one_line(exc)})"
    if isinstance(exc, ImageFileError):
        return "not a NIfTI image (nibabel cannot work out the file type)"
    short = re.search(r"Expected (\d+) bytes, got (\d+) bytes", str(exc))
    if short:
        return f"file is truncated ({short[2]} of {short[1]} data bytes present)"
    return f"cannot read NIfTI file ({type(exc).__name__}: {_one_line(exc)})"


def load_nifti(
    path: str | os.PathLike[str], *, dtype: Any = None
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI-1/2 file completely.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        dtype: ``None`` returns the stored values (with ``scl_slope``/``scl_inter`` applied by
            nibabel, which turns scaled integer data into floats); a floating dtype such as
            ``np.float32`` converts while reading, without a float64 intermediate.

    Returns:
        ``(array, affine, header)``: the voxel array in file order (``(X, Y, Z)`` or
        ``(X, Y, Z, T)``), the ``(4, 4)`` float64 voxel-to-world affine in mm (nibabel's best
        affine: sform, else qform) and the file's :class:`nibabel.Nifti1Header`.

    Raises:
        InputError: ``"<path>: <reason>"`` when the file is missing, is not NIfTI, or its data
            cannot be read (truncated or corrupt ``.nii.gz``, short ``.nii``).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a NIfTI file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({_one_line(exc)})") from exc
    if not raw:
        raise InputError(f"{path}: file is empty")
    try:
        # Decompress the whole stream ourselves rather than letting nibabel stream it: this checks
        # the gzip CRC and length trailer, so a download cut short by a few bytes or a corrupted
        # block is caught too, and costs no more time (measured: both ~70 ms for 240x240x155 int16).
        # The gzip magic, not the file name, decides (some tools write plain .nii named .nii.gz).
        data = gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw
        del raw
        img = _image_from_bytes(data, path)
        # nibabel reads lazily: force the data read inside the try so truncation shows up here.
        if dtype is not None and np.dtype(dtype).kind == "f":
            array = img.get_fdata(dtype=np.dtype(dtype), caching="unchanged")
        else:
            array = np.asanyarray(img.dataobj)
            if dtype is not None:
                array = array.astype(dtype, copy=False)
        affine = np.array(img.affine, dtype=np.float64)
        header = img.header
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: {_reason(exc, path)}") from exc
    return np.asarray(array), affine, header


def load_nifti_header(path: str | os.PathLike[str]) -> nib.Nifti1Header:
    """Read only the header of a NIfTI file (cheap; the voxel data is not read).

    Raises:
        InputError: the file is missing or not a NIfTI image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(path)
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: {_reason(exc, path)}") from exc
    if not isinstance(img, nib.Nifti1Image):
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img.header


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray | None,
    header: nib.Nifti1Header | None,
    path: str | os.PathLike[str],
) -> Path:
    """Write ``array`` as a NIfTI-1 file, atomically.

    The data type on disk is ``array.dtype`` (no scaling). When ``header`` is given it is copied
    (the caller's object is not changed) so that its fields (qform/sform codes, units,
    description, ...) carry over; its shape and data type are updated to fit ``array``.

    Args:
        array: ``(X, Y, Z)`` or ``(X, Y, Z, T)`` voxel array in file order.
        affine: ``(4, 4)`` voxel-to-world matrix in mm; ``None`` takes the header's.
        header: a NIfTI header to copy fields from, or ``None`` for a fresh one.
        path: destination ending in ``.nii`` or ``.nii.gz`` (the ending chooses compression).

    Returns:
        The written path.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    array = np.asanyarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        # float64 doubles the file size for no precision the images have.
        array = array.astype(np.float32)
    hdr = None if header is None else header.copy()
    if hdr is not None and not isinstance(hdr, nib.Nifti1Header):
        hdr = nib.Nifti1Header.from_header(hdr)
    img = nib.Nifti1Image(array, affine, header=hdr)
    img.set_data_dtype(array.dtype)
    # The values are written as they are: clear any scaling inherited from the source header.
    img.header.set_slope_inter(1.0, 0.0)
    if header is None:
        img.header.set_xyzt_units("mm", "sec")
        if affine is not None:
            # Same code in both forms, as BraTS and nnU-Net outputs have; readers that only look
            # at the qform (ITK prefers it) then agree with those that look at the sform.
            img.header.set_qform(affine, code=1)
            img.header.set_sform(affine, code=1)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return path
