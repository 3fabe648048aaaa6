"""The record every dataset layout is described by, and what the layouts share.

A :class:`Layout` names a format and carries its functions: how to recognise a folder of it
(``detect``), how to list its cases (``discover``), which label convention its files use, and how
to write a case in it (``case_paths``, ``write``). The registry that holds them is
:data:`cascadeseg.data.layouts.LAYOUTS`; each format lives in a module of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.labels import from_internal
from cascadeseg.data.nifti import is_nifti, save_nifti, strip_nifti_suffix
from cascadeseg.errors import InputError


@dataclass(frozen=True)
class CaseRef:
    """Where one case's files are, before anything is read.

    Attributes:
        case_id: identifier of the case (names outputs ``<case_id>.nii.gz``).
        files: paths by key: ``flair``, ``t1``, ``t1ce``, ``t2`` (3D files) or ``image`` (one 4D
            file, MSD), and optionally ``seg``.
        layout: name of the layout (a key of :data:`cascadeseg.data.layouts.LAYOUTS`).
        label_convention: convention of the ``seg`` file (a key of ``labels.CONVENTIONS``).
        extra: provenance and reading hints: ``grade`` (``HGG``/``LGG``), ``group`` (another
            enclosing folder), ``channels`` (modality -> channel index of a 4D ``image``),
            ``dataset_json``, ``problems`` (messages about missing or duplicated files, raised by
            :func:`cascadeseg.data.layouts.read_case`), ``missing`` (the modalities without a
            file; their message is the first of ``problems``, which
            ``read_case(ref, allow_missing=True)`` passes over).
    """

    case_id: str
    files: dict[str, Path]
    layout: str
    label_convention: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        # The dict fields are not hashable; case id, layout and files identify a case.
        return hash((self.case_id, self.layout, tuple(sorted(self.files.items()))))


#: ``detect(root)``: 0 when ``root`` is not a dataset of the layout, else how strongly it is (the
#: highest score wins; a marker file such as ``dataset.json`` scores above file names). May raise
#: :class:`InputError` for a folder that is recognisably of the layout but broken.
Detect = Callable[[Path], int]
#: ``discover(root, label_convention or None)``: the layout's cases under ``root``, unsorted;
#: missing or duplicated files are recorded in ``extra["problems"]``, not raised.
Discover = Callable[[Path, str | None], list[CaseRef]]
#: ``case_paths(case_id, root, labelled, ending)``: every file ``write`` makes for one case.
CasePaths = Callable[[str, Path, bool, str], list[Path]]
#: ``write(case, root, ending)``: write one case (``ending`` ``.nii.gz`` or ``.nii``); returns
#: the case folder, or the dataset folder for layouts that keep one folder per kind of file.
WriteCase = Callable[[Case, Path, str], Path]
#: ``update_index(root, ending)``: rebuild the dataset's index file (``dataset.json``).
UpdateIndex = Callable[[Path, str], Path]


@dataclass(frozen=True)
class Layout:
    """One dataset layout: how its folders look, are read and are written.

    Attributes:
        name: the key in the registry (``brats2021``, ``msd``, ...), stored in
            ``CaseRef.layout`` and ``Meta.source_layout``.
        title: short human name for messages (``"BraTS 2017-2021 (_flair)"``).
        description: what a dataset of the layout looks like on disk (one line).
        label_convention: convention of its label files when nothing else says (a key of
            :data:`cascadeseg.data.labels.CONVENTIONS`); the writer writes labels in it.
        detect: see :data:`Detect`; ``None``: never detected (e.g. explicit files).
        discover: see :data:`Discover`; ``None``: not a folder layout.
        looks_for: what ``detect`` looks for, for the "no cases found" message
            (``"BraTS case folders"``).
        case_paths: see :data:`CasePaths`; ``None`` (with ``write``): not writable.
        write: see :data:`WriteCase`.
        update_index: see :data:`UpdateIndex`; ``None``: the layout has no index file.
    """

    name: str
    title: str
    description: str
    label_convention: str
    detect: Detect | None = None
    discover: Discover | None = None
    looks_for: str = ""
    case_paths: CasePaths | None = None
    write: WriteCase | None = None
    update_index: UpdateIndex | None = None


# --------------------------------------------------------------------------------------------
# names and folders

# Names that datasets give the four modalities (after lower-casing and dropping spaces, "-", "_",
# "."): BraTS 2017-21 (flair, t1, t1ce, t2), BraTS 2023 (t2f, t1n, t1c, t2w), MSD (FLAIR, T1w, t1gd,
# T2w), nnU-Net's BraTS conversions (T1, T1ce, T2, Flair) and common spellings.
_MODALITY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "flair": ("flair", "t2f", "t2flair", "flairt2", "fla"),
    "t1": ("t1", "t1n", "t1w", "native", "t1native", "nativet1", "t1pre", "t1precontrast"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1wce", "t1gad", "t1post", "t1contrast", "contrast", "gd"),
    "t2": ("t2", "t2w"),
}
_SYNONYM_TO_MODALITY = {s: m for m, names in _MODALITY_SYNONYMS.items() for s in names}


def modality_from_name(name: str) -> str | None:
    """The modality (``flair``, ``t1``, ``t1ce``, ``t2``) a channel or file name denotes, or None.

    Case-insensitive, ignoring spaces, ``-``, ``_`` and ``.``: ``"T2-FLAIR"``, ``"t2f"`` and
    ``"Flair"`` are FLAIR; ``"T1w"``/``"t1n"``/``"native"`` T1; ``"T1Gd"``/``"t1c"``/``"contrast"``
    T1ce; ``"T2w"`` T2.
    """
    key = re.sub(r"[\s_\-.]", "", name.lower())
    return _SYNONYM_TO_MODALITY.get(key)


def is_hidden(path: Path) -> bool:
    """Whether a file or folder is hidden (``._BRATS_001.nii.gz``: macOS AppleDouble files
    shipped inside the MSD Task01 archive)."""
    return path.name.startswith(".")


def nifti_files(folder: Path) -> list[Path]:
    """The visible NIfTI files of ``folder``, sorted by name (none when it cannot be listed)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if not is_hidden(p) and is_nifti(p.name) and p.is_file()]


def stem(path: Path) -> str:
    """The file name without its NIfTI ending."""
    return strip_nifti_suffix(path.name)


def names_of(paths: Iterable[Path]) -> str:
    """``"a.nii.gz, b.nii"``: file names for messages."""
    return ", ".join(p.name for p in paths)


# --------------------------------------------------------------------------------------------
# discovery checks


def check_ref(ref: CaseRef, *, allow_missing: bool = False) -> None:
    """Raise the first problem found while discovering ``ref``'s files (missing, duplicated).

    Discovery records problems in ``ref.extra["problems"]`` instead of failing at once, so that
    ``cascadeseg inspect`` can list every bad case of a dataset. With ``allow_missing``, missing
    modality files (``extra["missing"]``, whose message comes first) are no problem as long as
    one modality is left.
    """
    problems = tuple(ref.extra.get("problems", ()))
    missing = ref.extra.get("missing", ())
    if allow_missing and missing:
        if not any(key in ref.files for key in (*MODALITIES, "image")):
            raise InputError(problems[0] if problems else f"{ref.case_id}: no modality file")
        problems = problems[1:]
    if problems:
        raise InputError(problems[0])


def require_cases(refs: Sequence[CaseRef], root: Path | str, layout: str) -> None:
    """Raise when discovery found no case under ``root``."""
    if not refs:
        raise InputError(f"{root}: no cases found ({layout} layout)")


# --------------------------------------------------------------------------------------------
# writing

_INT16 = np.iinfo(np.int16)


def image_dtype(array: np.ndarray) -> type[np.generic]:
    """``np.int16`` if every value of ``array`` is an integer within int16, else ``np.float32``."""
    if array.size == 0:
        return np.int16
    if not np.isfinite(array).all():
        return np.float32
    lo, hi = float(array.min()), float(array.max())
    if lo < _INT16.min or hi > _INT16.max:
        return np.float32
    if array.dtype.kind in "iub" or np.array_equal(array, np.rint(array)):
        return np.int16
    return np.float32


def cast_image(array: np.ndarray) -> np.ndarray:
    """``array`` in the data type :func:`image_dtype` chooses (rounded when it is int16)."""
    dtype = image_dtype(array)
    if dtype is np.int16:
        return np.rint(array).astype(np.int16) if array.dtype.kind == "f" else array.astype(dtype)
    return array.astype(np.float32, copy=False)


def label_on_disk(case: Case, convention: str) -> np.ndarray | None:
    """The case's label map in the values of ``convention`` (None when the case has none)."""
    return None if case.label is None else from_internal(case.label, convention)


def save_image(array: np.ndarray, case: Case, path: Path) -> Path:
    """Write one image of ``case`` (3D or 4D, file order) on the case's affine, atomically, as
    int16 when its values allow (:func:`image_dtype`)."""
    return save_nifti(cast_image(array), np.asarray(case.meta.affine, np.float64), None, path)


def save_label(label: np.ndarray, case: Case, path: Path) -> Path:
    """Write a label map (values on disk) on the case's affine, atomically."""
    return save_nifti(label, np.asarray(case.meta.affine, np.float64), None, path)
