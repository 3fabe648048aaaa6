"""Readers for every supported dataset layout, and the label-map writer.

One front door: :func:`discover_cases` finds the cases of a folder (detecting its layout with
:func:`detect_layout` unless told) and returns :class:`CaseRef` s; :func:`read_case` turns one into
the single :class:`~cascadeseg.data.case.Case` contract:

* ``image``: float32 ``(4, X, Y, Z)``, channels FLAIR, T1, T1ce, T2 whatever the files call them
  or in which order they store them, voxel order of the files (no reorientation);
* ``label``: uint8 ``(X, Y, Z)`` in the internal convention (0 background, 1 NCR, 2 ED, 3 ET) or
  ``None`` when the case has no segmentation;
* ``meta``: affine and spacing (mm) of the files, the NIfTI header of the first image (copied to
  written label maps), the source layout and the source label convention.

Every case read is validated (:mod:`cascadeseg.data.validate`); problems raise
:class:`~cascadeseg.errors.InputError` with one line naming the file.
:func:`write_label_map` is the inverse for predictions: it writes ``<case_id>.nii.gz`` on the
input's grid with the input's header, in the source label convention or one the caller names.

Layouts (:data:`LAYOUTS`, one :class:`Layout` record each, one module per format):

=============  ==============================================================  ===============
name           files per case                                                  labels
=============  ==============================================================  ===============
``brats2021``  ``[HGG|LGG/]<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``     ``brats2021``
               (BraTS 2017-2021)
``brats2023``  ``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii[.gz]`` (GLI, SSA,     ``brats2023``
               MET, PED, MEN; BraTS 2024 post-treatment: pass ``brats2024``)
``msd``        ``imagesTr/<case>.nii.gz`` 4D + ``labelsTr/`` + ``dataset.json``  ``msd``
``nnunet``     ``imagesTr/<case>_000{0..3}.nii.gz`` + ``labelsTr/`` +            from
               ``dataset.json`` (channel names and labels read from it)        ``dataset.json``
``files``      four explicit files (:func:`read_files`)                         given
=============  ==============================================================  ===============

A new layout is a module that builds a :class:`Layout` and one :func:`register_layout` call.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from cascadeseg.data.case import Case, Meta
from cascadeseg.data.labels import NUM_CLASSES, from_internal, get_convention
from cascadeseg.data.layouts.base import (
    CaseRef,
    Layout,
    is_hidden,
    modality_from_name,
    require_cases,
)
from cascadeseg.data.layouts.brats import BRATS2021, BRATS2023
from cascadeseg.data.layouts.dataset_json import (
    channels_from_dataset_json,
    convention_from_dataset_json,
)
from cascadeseg.data.layouts.files import FILES, read_files
from cascadeseg.data.layouts.msd import MSD
from cascadeseg.data.layouts.nnunet import NNUNET
from cascadeseg.data.layouts.reading import read_case
from cascadeseg.data.nifti import save_nifti
from cascadeseg.errors import InputError

__all__ = [
    "LAYOUTS",
    "CaseRef",
    "Layout",
    "channels_from_dataset_json",
    "convention_from_dataset_json",
    "detect_layout",
    "discover_cases",
    "get_layout",
    "load_dataset",
    "modality_from_name",
    "read_case",
    "read_files",
    "register_layout",
    "unregister_layout",
    "write_label_map",
]

#: The known layouts by name, in registration order (``cascadeseg`` commands offer them in it).
LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    """Add ``layout`` to :data:`LAYOUTS` (detection, discovery and writing then know it).

    Raises:
        ValueError: a layout of that name is registered already.
    """
    if layout.name in LAYOUTS:
        raise ValueError(f"layout {layout.name!r} is registered already")
    LAYOUTS[layout.name] = layout
    return layout


def unregister_layout(name: str) -> None:
    """Remove the layout ``name`` from :data:`LAYOUTS` (tests that registered one)."""
    del LAYOUTS[name]


for _layout in (BRATS2021, BRATS2023, MSD, NNUNET, FILES):
    register_layout(_layout)


def get_layout(name: str) -> Layout:
    """The registered layout ``name``.

    Raises:
        InputError: no layout has that name.
    """
    try:
        return LAYOUTS[name]
    except KeyError:
        raise InputError(f"unknown layout {name!r} (known: {', '.join(LAYOUTS)})") from None


# --------------------------------------------------------------------------------------------
# detection and discovery


def detect_layout(root: str | os.PathLike[str]) -> str:
    """The layout of a dataset folder (or of a single case folder).

    Every registered layout scores the folder (:data:`cascadeseg.data.layouts.base.Detect`):
    ``imagesTr/`` or ``dataset.json`` means MSD (4D images) or nnU-Net raw (``<case>_0000`` 3D
    channel files); otherwise BraTS case folders are recognised by their file names.

    Raises:
        InputError: the folder is missing, empty, holds no recognisable cases, or mixes layouts.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (for single files use read_files)")
    scores = {name: lay.detect(root) for name, lay in LAYOUTS.items() if lay.detect is not None}
    best = max(scores.values(), default=0)
    if best > 0:
        winners = [LAYOUTS[name] for name, score in scores.items() if score == best]
        if len(winners) > 1:
            titles = " and ".join(lay.title for lay in winners)
            raise InputError(f"{root}: mixes {titles} cases; pass the layout explicitly")
        return winners[0].name
    if not any(not is_hidden(p) for p in root.iterdir()):
        raise InputError(f"{root}: no cases found (the folder is empty)")
    hints = dict.fromkeys(lay.looks_for for lay in LAYOUTS.values() if lay.looks_for)
    raise InputError(f"{root}: no cases found (no {', no '.join(hints)})")


def discover_cases(
    root: str | os.PathLike[str],
    layout: str | None = None,
    label_convention: str | None = None,
) -> list[CaseRef]:
    """The cases of a dataset folder, sorted by case id. Nothing but file names is read.

    Args:
        root: dataset folder, or one case folder of a BraTS layout.
        layout: a key of :data:`LAYOUTS` (not ``files``); ``None`` detects it.
        label_convention: convention of the segmentation files; ``None`` takes the layout's
            (``brats2021``, ``brats2023``) or the one ``dataset.json`` describes (MSD, nnU-Net).
            BraTS 2024 post-treatment data use the 2023 layout with ``"brats2024"``.

    Returns:
        One :class:`CaseRef` per case. Cases with missing or duplicated files are included with
        ``extra["problems"]``; :func:`read_case` raises them.

    Raises:
        InputError: unknown layout or convention, missing ``dataset.json``, no cases, or the same
            case id twice.
    """
    root = Path(root)
    chosen = get_layout(layout or detect_layout(root))
    if chosen.discover is None:
        raise InputError(
            f"{root}: the {chosen.name!r} layout is not read from a folder ({chosen.description})"
        )
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    if label_convention is not None:
        get_convention(label_convention)
    refs = chosen.discover(root, label_convention)
    require_cases(refs, root, chosen.name)
    refs.sort(key=lambda r: r.case_id)
    for first, second in itertools.pairwise(refs):
        if first.case_id == second.case_id:
            where = [str(next(iter(r.files.values()), root)) for r in (first, second)]
            raise InputError(
                f"{root}: case id {first.case_id} appears twice ({where[0]}, {where[1]})"
            )
    return refs


def load_dataset(
    root: str | os.PathLike[str],
    layout: str | None = None,
    label_convention: str | None = None,
    *,
    progress: bool = True,
    allow_missing: bool = False,
) -> list[Case]:
    """Discover and read every case of a folder (small datasets; training uses the cache);
    ``allow_missing``: cases may lack modality files (:func:`read_case`)."""
    refs = discover_cases(root, layout, label_convention)
    bar = tqdm(refs, desc="reading cases", disable=not progress)
    return [read_case(ref, allow_missing=allow_missing) for ref in bar]


# --------------------------------------------------------------------------------------------
# writing predictions


def write_label_map(
    label_internal: np.ndarray,
    meta: Meta,
    out_dir: str | os.PathLike[str],
    *,
    convention: str | None = None,
    dtype: Any = np.uint8,
) -> Path:
    """Write an internal label map as ``<out_dir>/<case_id>.nii.gz`` on the input's grid.

    Args:
        label_internal: ``(X, Y, Z)`` integer array with internal values 0-3, shape
            ``meta.shape``.
        meta: the input case's meta: its affine and header are copied (a header is built from
            ``meta.affine`` when ``meta.header`` is None).
        out_dir: output folder (created).
        convention: label convention to write; default ``meta.label_convention``.
        dtype: integer data type on disk.

    Returns:
        The written path. The write is atomic (temporary file + rename).
    """
    label = np.asarray(label_internal)
    if tuple(label.shape) != tuple(meta.shape):
        raise ValueError(f"label map shape {label.shape} differs from the case shape {meta.shape}")
    if label.size and (int(label.min()) < 0 or int(label.max()) >= NUM_CLASSES):
        raise ValueError("label map holds values outside the internal labels 0-3")
    out = from_internal(label, convention or meta.label_convention).astype(dtype, copy=False)
    header = meta.header
    if header is not None:
        header = header.copy()
        # The display range of the source image (e.g. cal_max 2000) would hide labels 1-4.
        header["cal_min"] = 0
        header["cal_max"] = 0
        if not isinstance(header, nib.Nifti1Header):
            header = nib.Nifti1Header.from_header(header)
    return save_nifti(out, meta.affine, header, Path(out_dir) / f"{meta.case_id}.nii.gz")
