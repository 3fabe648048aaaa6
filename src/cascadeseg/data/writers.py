"""Write whole cases to disk in a dataset layout: the inverse of :mod:`cascadeseg.data.layouts`.

Used by the synthetic generator and by tests to make datasets on disk. Each layout is written
exactly as its readers (and the original datasets) expect it, by the writer of its
:class:`~cascadeseg.data.layouts.Layout` record:

* ``brats2021``: ``<root>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``, labels 1/2/4;
* ``brats2023``: ``<root>/<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``, labels 1/2/3;
* ``msd``: ``<root>/imagesTr/<case>.nii.gz`` 4D ``(X, Y, Z, 4)`` in the Task01 channel order
  FLAIR, T1w, T1gd, T2w, ``labelsTr/<case>.nii.gz`` (1 edema, 2 non-enhancing, 3 enhancing) and
  ``dataset.json``; cases without a label go to ``imagesTs/``;
* ``nnunet``: ``<root>/imagesTr/<case>_000{0..3}.nii.gz`` in the channel order of nnU-Net's own
  BraTS conversion (T1, T1ce, T2, FLAIR), ``labelsTr/<case>.nii.gz`` (1 edema, 2 necrosis,
  3 enhancing) and a v2 ``dataset.json`` with region-based labels and ``regions_class_order``.

Images are stored as int16 when every value is an integer in the int16 range (BraTS ships int16),
float32 otherwise (:func:`cascadeseg.data.layouts.base.image_dtype`). Every file is written
atomically; ``dataset.json`` is rebuilt from the files present after each case (under a lock
where the platform has one), so it stays complete when several cases are written, one after
another or by parallel workers.
"""

from __future__ import annotations

import os
from pathlib import Path

from cascadeseg.data.case import Case
from cascadeseg.data.layouts import LAYOUTS
from cascadeseg.data.layouts.base import CasePaths, WriteCase

#: The built-in layouts :func:`write_case` can write (a registered layout with a writer is
#: writable too).
WRITABLE_LAYOUTS: tuple[str, ...] = tuple(name for name, lay in LAYOUTS.items() if lay.write)


def _writer(layout: str) -> tuple[CasePaths, WriteCase]:
    """The ``case_paths`` and ``write`` functions of a registered layout."""
    found = LAYOUTS.get(layout)
    if found is None or found.write is None or found.case_paths is None:
        known = ", ".join(name for name, lay in LAYOUTS.items() if lay.write)
        raise ValueError(f"cannot write layout {layout!r} (known: {known})")
    return found.case_paths, found.write


def _ending(compress: bool) -> str:
    return ".nii.gz" if compress else ".nii"


def case_paths(
    case_id: str,
    root: str | os.PathLike[str],
    layout: str,
    *,
    labelled: bool = True,
    compress: bool = True,
) -> list[Path]:
    """The files :func:`write_case` writes for one case (``dataset.json`` included), in order.

    Lets a caller check every path before writing anything (``cascadeseg synth`` refuses to
    replace existing files).

    Args:
        case_id: the case's id.
        root: dataset folder.
        layout: one of :data:`WRITABLE_LAYOUTS`.
        labelled: the case has a label map.
        compress: ``.nii.gz`` (default) or ``.nii`` files.
    """
    paths, _ = _writer(layout)
    return paths(case_id, Path(root), labelled, _ending(compress))


def write_case(
    case: Case,
    root: str | os.PathLike[str],
    layout: str,
    *,
    compress: bool = True,
) -> Path:
    """Write one case (four images and, if present, its label map) in ``layout``.

    Args:
        case: image ``(4, X, Y, Z)`` in the order FLAIR, T1, T1ce, T2; label internal or None;
            the label map is written in the layout's label convention.
        root: dataset folder (created).
        layout: one of :data:`WRITABLE_LAYOUTS`.
        compress: ``.nii.gz`` (default) or ``.nii`` files.

    Returns:
        The case folder (``brats2021``/``brats2023``) or the dataset folder (``msd``/``nnunet``).
    """
    _, write = _writer(layout)
    return write(case, Path(root), _ending(compress))


def update_dataset_json(
    root: str | os.PathLike[str], layout: str, *, ending: str = ".nii.gz"
) -> Path:
    """Rebuild ``<root>/dataset.json`` of an ``msd`` or ``nnunet`` dataset from its files.

    Fields already present and not derived from the files (``name``, ``description``, ...) are
    kept; the case lists and counts are recomputed.
    """
    found = LAYOUTS.get(layout)
    if found is None or found.update_index is None:
        raise ValueError(f"layout {layout!r} has no dataset.json")
    return found.update_index(Path(root), ending)
