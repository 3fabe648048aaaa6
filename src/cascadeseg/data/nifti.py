"""Reading and writing single NIfTI files, with errors meant for people.

Reading is header-first. :func:`read_header` parses only the 348-byte (NIfTI-1) or 540-byte
(NIfTI-2) header, decompressing no more of a ``.nii.gz`` than that, and checks what the header
claims before any voxel data is touched:

* the affine (finite, invertible, every voxel spacing > 0:
  :func:`cascadeseg.data.validate.check_affine`);
* the number of values (voxels x channels) against a cap, :func:`max_voxels` (default
  :data:`DEFAULT_MAX_VOXELS`, raised with the environment variable ``CASCADESEG_MAX_VOXELS``);
* the bytes it describes against the file's size: an uncompressed file must hold them, a gzip file
  cannot hold more than :data:`DEFLATE_MAX_RATIO` times its size (deflate's limit).

So a 105-byte file whose header claims 2 GiB is rejected without allocating anything, and the
readers of :mod:`cascadeseg.data.layouts` compare the headers of a case's files with each other
before decompressing any of them. :func:`load_nifti` then reads the voxel data into one buffer of
exactly the size the header describes, decompressing in bounded chunks, so a gzip stream that holds
more than its header says (a "gzip bomb") costs no more memory than the header's own claim. It
checks the gzip CRC and length, so a truncated or corrupt ``.nii.gz`` is reported here (as an
:class:`~cascadeseg.errors.InputError` naming the file) and not later, deep in preprocessing.

:func:`save_nifti` writes to a temporary file in the destination folder and renames it into place
(``os.replace``), so a reader never sees a half-written file, even when a run is interrupted.

Arrays are in the voxel order of the file (NIfTI's ``i, j, k[, t]``); nothing is reoriented here.
"""

from __future__ import annotations

import io
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import apply_read_scaling
from nibabel.wrapstruct import WrapStructError

from cascadeseg.data.validate import check_affine
from cascadeseg.errors import InputError
from cascadeseg.fsutil import atomic_path

#: File name endings accepted as NIfTI.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")

#: Default cap on the values (voxels x channels) of one image file: 512^3, about 18 BraTS volumes
#: (240 x 240 x 155) and 2 GiB as float32 once read. Raise it with ``CASCADESEG_MAX_VOXELS``.
DEFAULT_MAX_VOXELS = 512**3
#: Environment variable that overrides :data:`DEFAULT_MAX_VOXELS`.
MAX_VOXELS_ENV = "CASCADESEG_MAX_VOXELS"
#: Largest ratio of uncompressed to compressed size deflate can reach (zlib's documentation:
#: 1032:1); a gzip file describing more than this is cut short or lies in its header.
DEFLATE_MAX_RATIO = 1032
#: Largest ``vox_offset`` accepted (header extensions are kilobytes in practice).
MAX_VOX_OFFSET = 64 * 2**20

# What nibabel, gzip and zlib raise on files that are not (whole) NIfTI images.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    ImageFileError,
    HeaderDataError,
    WrapStructError,
    TypeError,
)

_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib parses the gzip wrapper and checks CRC and length
_CHUNK = 4 * 2**20  # bytes read or decompressed per step
_HEADER_BYTES = 540  # the larger of the NIfTI-1 (348) and NIfTI-2 (540) headers


@dataclass(frozen=True, eq=False)
class NiftiInfo:
    """What a NIfTI file's header says, checked against the file (see :func:`read_header`).

    Attributes:
        path: the file.
        header: its header (without extensions; :func:`load_nifti` returns the full one).
        shape: the data shape ``(X, Y, Z[, C])`` in voxels.
        dtype: the stored data type (with the file's byte order).
        affine: ``(4, 4)`` voxel-to-world matrix in mm (sform, else qform), already checked.
        offset: byte offset of the voxel data (``vox_offset``).
        compressed: gzip file (decided by the magic bytes, not the name).
        file_size: bytes on disk.
    """

    path: Path
    header: nib.Nifti1Header
    shape: tuple[int, ...]
    dtype: np.dtype
    affine: np.ndarray
    offset: int
    compressed: bool
    file_size: int

    @property
    def nbytes(self) -> int:
        """Bytes of voxel data the header describes."""
        return math.prod(self.shape) * self.dtype.itemsize


def max_voxels() -> int:
    """The cap on values per image: ``CASCADESEG_MAX_VOXELS`` if set, else the default."""
    text = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{MAX_VOXELS_ENV}={text!r}: expected a positive number of voxels")
    return value


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


def _reason(exc: BaseException) -> str:
    """A short, human reason for a failed read."""
    if isinstance(exc, EOFError) or "ended before the end-of-stream" in str(exc):
        return "file is truncated (compressed data ends early)"
    if isinstance(exc, zlib.error) or type(exc).__name__ == "BadGzipFile":
        return f"corrupt gzip data ({_one_line(exc)})"
    if isinstance(exc, ImageFileError):
        return "not a NIfTI image (nibabel cannot work out the file type)"
    return f"cannot read NIfTI file ({type(exc).__name__}: {_one_line(exc)})"


def _size(nbytes: int) -> str:
    """``1610612736 -> "1.5 GiB"``."""
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} GiB"


def _header_prefix(path: Path) -> tuple[bytes, bool]:
    """The first (up to) 540 bytes of the file's NIfTI stream, decompressing only those, and
    whether the file is gzip-compressed (from its first two bytes), in one opening."""
    with open(path, "rb") as handle:
        first = handle.read(64 * 1024)
        if not first.startswith(_GZIP_MAGIC):
            return first[:_HEADER_BYTES], False
        inflater = zlib.decompressobj(_GZIP_WBITS)
        prefix = b""
        pending = first
        while len(prefix) < _HEADER_BYTES:
            if not pending:
                pending = handle.read(64 * 1024)
                if not pending:
                    break
            prefix += inflater.decompress(pending, _HEADER_BYTES - len(prefix))
            pending = inflater.unconsumed_tail
            if inflater.eof:  # the next gzip member (if any) continues the stream
                pending = inflater.unused_data
                if pending and not pending.startswith(_GZIP_MAGIC[:1]):
                    break
                inflater = zlib.decompressobj(_GZIP_WBITS)
        return prefix, True


def _parse_header(prefix: bytes, path: Path) -> nib.Nifti1Header:
    """Parse a NIfTI-1 or NIfTI-2 single-file header from the first bytes of the stream."""
    if len(prefix) < 348:
        raise InputError(f"{path}: not a NIfTI image (only {len(prefix)} bytes, header needs 348)")
    sizeof_hdr = {int.from_bytes(prefix[:4], "little"), int.from_bytes(prefix[:4], "big")}
    klass: type[nib.Nifti1Header]
    if 348 in sizeof_hdr:
        klass, size, magic = nib.Nifti1Header, 348, prefix[344:348]
    elif 540 in sizeof_hdr and len(prefix) >= 540:
        klass, size, magic = nib.Nifti2Header, 540, prefix[4:8]
    else:
        raise InputError(f"{path}: not a NIfTI image (header size field is not 348 or 540)")
    if not magic.startswith((b"n+1", b"n+2")):
        raise InputError(f"{path}: not a single-file NIfTI image (magic {magic!r})")
    return klass(prefix[:size])


def check_limits(info: NiftiInfo) -> None:
    """Compare what a header describes with the voxel cap (:func:`max_voxels`) and the file's size.

    Raises:
        InputError: an empty shape, more values than the cap, an implausible data offset, or more
            data than the file can hold (truncated, or a wrong header).
    """
    path, shape, file_size, cap = info.path, info.shape, info.file_size, max_voxels()
    values = math.prod(shape)
    described = f"{'x'.join(str(s) for s in shape)} {info.dtype.name}"
    if values == 0:
        raise InputError(f"{path}: header describes an empty image (shape {described})")
    if values > cap:
        raise InputError(
            f"{path}: header describes {described} = {values} values, more than the cap of "
            f"{cap} (set {MAX_VOXELS_ENV} to raise it)"
        )
    if not 0 <= info.offset <= MAX_VOX_OFFSET:
        raise InputError(f"{path}: header's data offset (vox_offset) {info.offset} is not valid")
    total = info.offset + info.nbytes
    if not info.compressed and file_size < total:
        present = max(0, file_size - info.offset)
        raise InputError(
            f"{path}: file is truncated ({present} of {info.nbytes} data bytes present)"
        )
    if info.compressed and total > file_size * DEFLATE_MAX_RATIO + _HEADER_BYTES:
        raise InputError(
            f"{path}: header describes {_size(info.nbytes)} of data ({described}), more than a "
            f"{_size(file_size)} gzip file can hold: the file is truncated or its header is wrong"
        )


def read_header(path: str | os.PathLike[str], *, limits: bool = True) -> NiftiInfo:
    """Read and check a NIfTI file's header without reading its voxel data.

    Only the header's bytes are read (and, for ``.nii.gz``, decompressed).

    Args:
        path: the file.
        limits: also apply :func:`check_limits` (voxel cap, size against the file). A reader that
            first compares the headers of several files with each other (a case's modalities)
            passes False and calls :func:`check_limits` after the comparison, so that a file that
            disagrees with its siblings is reported as such.

    Returns:
        A :class:`NiftiInfo` (shape, dtype, affine, data offset).

    Raises:
        InputError: ``"<path>: <reason>"``: missing, empty or not NIfTI; an affine that is not
            finite, not invertible or has a zero voxel spacing; more values than
            :func:`max_voxels`; a header that describes more data than the file can hold.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a NIfTI file")
    try:
        file_size = path.stat().st_size
        if file_size == 0:
            raise InputError(f"{path}: file is empty")
        prefix, compressed = _header_prefix(path)
        header = _parse_header(prefix, path)
        info = NiftiInfo(
            path=path,
            header=header,
            shape=tuple(int(s) for s in header.get_data_shape()),
            dtype=np.dtype(header.get_data_dtype()),
            affine=np.array(header.get_best_affine(), dtype=np.float64),
            offset=int(header.get_data_offset()),
            compressed=compressed,
            file_size=file_size,
        )
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: {_reason(exc)}") from exc
    check_affine(info.affine, path)
    if limits:
        check_limits(info)
    return info


def _inflate_into(info: NiftiInfo, out: np.ndarray) -> None:
    """Decompress the gzip file into ``out`` (uint8, the size the header describes).

    Chunked, so nothing beyond ``out`` is allocated whatever the stream holds. Concatenated gzip
    members are followed; data beyond ``out`` is decompressed and dropped (to check the CRC) up to
    the size of ``out``, past which the file is rejected.
    """
    path, view, filled, surplus = info.path, memoryview(out.data), 0, 0
    inflater, started, pending = zlib.decompressobj(_GZIP_WBITS), False, b""
    with open(path, "rb") as handle:
        while True:
            if not pending:
                pending = handle.read(_CHUNK)
                if not pending:
                    break
            if not started and not pending.startswith(_GZIP_MAGIC[:1]):
                break  # padding or other bytes after the last member: ignored, as gzip -d does
            started = True
            room = len(out) - filled
            # At most `room` bytes while filling; past the end, chunks that are only counted.
            piece = inflater.decompress(pending, min(_CHUNK, room) if room else _CHUNK)
            pending = inflater.unconsumed_tail
            if room:
                view[filled : filled + len(piece)] = piece
                filled += len(piece)
            else:
                surplus += len(piece)
                if surplus > max(len(out), 2**20):
                    raise InputError(f"{path}: holds far more data than its header describes")
            if inflater.eof:
                pending = inflater.unused_data
                inflater, started = zlib.decompressobj(_GZIP_WBITS), False
    if started:
        raise InputError(f"{path}: file is truncated (compressed data ends early)")
    if filled < len(out):
        present = max(0, filled - info.offset)
        raise InputError(
            f"{path}: file is truncated ({present} of {info.nbytes} data bytes present)"
        )


def _read_into(info: NiftiInfo, out: np.ndarray) -> None:
    """Read an uncompressed file's first ``len(out)`` bytes into ``out``."""
    view, filled = memoryview(out.data), 0
    with open(info.path, "rb") as handle:
        while filled < len(out):
            count = handle.readinto(view[filled:])
            if not count:
                present = max(0, filled - info.offset)
                raise InputError(
                    f"{info.path}: file is truncated ({present} of {info.nbytes} data bytes "
                    f"present)"
                )
            filled += count


def _scaled(raw: np.ndarray, header: nib.Nifti1Header, dtype: Any) -> np.ndarray:
    """Apply ``scl_slope``/``scl_inter`` as nibabel's ``ArrayProxy`` does, then ``dtype``."""
    slope, inter = header.get_slope_inter()
    slope_a = np.asanyarray(1.0 if slope is None else slope)
    inter_a = np.asanyarray(0.0 if inter is None else inter)
    use = slope_a.dtype if dtype is None else np.dtype(dtype)
    if np.can_cast(slope_a, use):
        slope_a = slope_a.astype(use)
    if np.can_cast(inter_a, use):
        inter_a = inter_a.astype(use)
    array = apply_read_scaling(raw, slope_a, inter_a)  # type: ignore[arg-type]
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array


def load_nifti(
    path: str | os.PathLike[str], *, dtype: Any = None, info: NiftiInfo | None = None
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI-1/2 file completely, header first (:func:`read_header`).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        dtype: ``None`` returns the stored values (with ``scl_slope``/``scl_inter`` applied as
            nibabel does, which turns scaled integer data into floats); a floating dtype such as
            ``np.float32`` converts while reading.
        info: the file's :class:`NiftiInfo` when the caller already read and checked the
            header (:func:`read_header`, or ``read_header(limits=False)`` followed by
            :func:`check_limits`); it is not checked again.

    Returns:
        ``(array, affine, header)``: the voxel array in file order (``(X, Y, Z)`` or
        ``(X, Y, Z, T)``), the ``(4, 4)`` float64 voxel-to-world affine in mm (nibabel's best
        affine: sform, else qform) and the file's :class:`nibabel.Nifti1Header` (with extensions).

    Raises:
        InputError: ``"<path>: <reason>"`` when the header fails :func:`read_header`'s checks or
            the data cannot be read (truncated or corrupt ``.nii.gz``, short ``.nii``).
    """
    if info is None:
        info = read_header(path)
    path = info.path
    # One buffer of exactly the bytes the header describes (np.empty: pages are only committed as
    # they are written, so a stream that ends early costs what it held).
    buffer = np.empty(info.offset + info.nbytes, dtype=np.uint8)
    try:
        if info.compressed:
            _inflate_into(info, buffer)
        else:
            _read_into(info, buffer)
        header = type(info.header).from_fileobj(io.BytesIO(buffer[: info.offset].tobytes()))
        raw = np.ndarray(info.shape, dtype=info.dtype, buffer=buffer, offset=info.offset, order="F")
        array = _scaled(raw, header, dtype)
        # As nibabel's loaded images do: the values are returned scaled, so the header says
        # unscaled, and the data offset belongs to the file read, not to the header's next use.
        header.set_slope_inter(None, None)
        header.set_data_offset(0)
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: {_reason(exc)}") from exc
    return np.asarray(array), info.affine.copy(), header


def load_nifti_header(path: str | os.PathLike[str]) -> nib.Nifti1Header:
    """Read only the header of a NIfTI file (cheap; the voxel data is not read).

    Raises:
        InputError: the file is missing, not a NIfTI image, or fails :func:`read_header`'s checks.
    """
    return read_header(path).header


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
