"""Write whole cases to disk in a dataset layout: the inverse of :mod:`cascadeseg.data.layouts`.

Used by the synthetic generator and by tests to make datasets on disk. Each layout is written
exactly as its readers (and the original datasets) expect it:

* ``brats2021``: ``<root>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``, labels 1/2/4;
* ``brats2023``: ``<root>/<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``, labels 1/2/3;
* ``msd``: ``<root>/imagesTr/<case>.nii.gz`` 4D ``(X, Y, Z, 4)`` in the Task01 channel order
  FLAIR, T1w, T1gd, T2w, ``labelsTr/<case>.nii.gz`` (1 edema, 2 non-enhancing, 3 enhancing) and
  ``dataset.json``; cases without a label go to ``imagesTs/``;
* ``nnunet``: ``<root>/imagesTr/<case>_000{0..3}.nii.gz`` in the channel order of nnU-Net's own
  BraTS conversion (T1, T1ce, T2, FLAIR), ``labelsTr/<case>.nii.gz`` (1 edema, 2 necrosis,
  3 enhancing) and a v2 ``dataset.json`` with region-based labels and ``regions_class_order``.

Images are stored as int16 when every value is an integer in the int16 range (BraTS ships int16),
float32 otherwise. Every file is written atomically; ``dataset.json`` is rebuilt from the files
present after each case (under a lock where the platform has one), so it stays complete when
several cases are written, one after another or by parallel workers.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.labels import from_internal
from cascadeseg.data.layouts import BRATS_FILE_NAMES, DEFAULT_CONVENTION
from cascadeseg.data.nifti import save_nifti, strip_nifti_suffix
from cascadeseg.fsutil import write_json_atomic

#: Layouts :func:`write_case` can write.
WRITABLE_LAYOUTS: tuple[str, ...] = ("brats2021", "brats2023", "msd", "nnunet")

#: Channel names written to ``dataset.json``, by channel index.
MSD_CHANNELS: tuple[tuple[str, str], ...] = (
    ("flair", "FLAIR"),
    ("t1", "T1w"),
    ("t1ce", "t1gd"),
    ("t2", "T2w"),
)
NNUNET_CHANNELS: tuple[tuple[str, str], ...] = (
    ("t1", "T1"),
    ("t1ce", "T1ce"),
    ("t2", "T2"),
    ("flair", "FLAIR"),
)

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


def _cast_image(array: np.ndarray) -> np.ndarray:
    dtype = image_dtype(array)
    if dtype is np.int16:
        return np.rint(array).astype(np.int16) if array.dtype.kind == "f" else array.astype(dtype)
    return array.astype(np.float32, copy=False)


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
    if layout not in WRITABLE_LAYOUTS:
        raise ValueError(f"cannot write layout {layout!r} (known: {', '.join(WRITABLE_LAYOUTS)})")
    root = Path(root)
    ending = ".nii.gz" if compress else ".nii"
    if layout in BRATS_FILE_NAMES:
        sep, suffixes = BRATS_FILE_NAMES[layout]
        keys = [*MODALITIES, "seg"] if labelled else list(MODALITIES)
        return [root / case_id / f"{case_id}{sep}{suffixes[k]}{ending}" for k in keys]
    images = root / ("imagesTr" if labelled else "imagesTs")
    if layout == "msd":
        paths = [images / f"{case_id}{ending}"]
    else:
        paths = [images / f"{case_id}_{i:04d}{ending}" for i in range(len(NNUNET_CHANNELS))]
    if labelled:
        paths.append(root / "labelsTr" / f"{case_id}{ending}")
    return [*paths, root / "dataset.json"]


def write_case(
    case: Case,
    root: str | os.PathLike[str],
    layout: str,
    *,
    compress: bool = True,
) -> Path:
    """Write one case (four images and, if present, its label map) in ``layout``.

    Args:
        case: image ``(4, X, Y, Z)`` in the order FLAIR, T1, T1ce, T2; label internal or None.
        root: dataset folder (created).
        layout: one of :data:`WRITABLE_LAYOUTS`.
        compress: ``.nii.gz`` (default) or ``.nii`` files.

    Returns:
        The case folder (``brats2021``/``brats2023``) or the dataset folder (``msd``/``nnunet``).
    """
    root = Path(root)
    affine = np.asarray(case.meta.affine, dtype=np.float64)
    seg = None
    if case.label is not None:
        seg = from_internal(case.label, DEFAULT_CONVENTION[layout])
    # One naming for writing and for checking before writing (synth's refusal to overwrite).
    paths = case_paths(case.case_id, root, layout, labelled=seg is not None, compress=compress)

    if layout in BRATS_FILE_NAMES:
        for c in range(len(MODALITIES)):
            save_nifti(_cast_image(case.image[c]), affine, None, paths[c])
        if seg is not None:
            save_nifti(seg, affine, None, paths[len(MODALITIES)])
        return root / case.case_id

    if layout == "msd":
        order = [MODALITIES.index(m) for m, _ in MSD_CHANNELS]
        data = _cast_image(np.stack([case.image[c] for c in order], axis=-1))
        save_nifti(data, affine, None, paths[0])
    else:
        for index, (modality, _) in enumerate(NNUNET_CHANNELS):
            channel = _cast_image(case.image[MODALITIES.index(modality)])
            save_nifti(channel, affine, None, paths[index])
    if seg is not None:
        save_nifti(seg, affine, None, paths[-2])  # labelsTr/<id>, before dataset.json
    update_dataset_json(root, layout, ending=".nii.gz" if compress else ".nii")
    return root


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` itself (POSIX); a no-op where ``fcntl`` is
    missing. Locking the folder rather than a lock file leaves nothing behind."""
    try:
        import fcntl
    except ImportError:  # Windows: sequential writers are still fine
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _cases_in(folder: Path, ending: str) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        p.name[: -len(ending)]
        for p in folder.iterdir()
        if p.name.endswith(ending) and not p.name.startswith(".")
    )


def _write_json(data: dict[str, Any], path: Path) -> None:
    write_json_atomic(data, path)


def update_dataset_json(
    root: str | os.PathLike[str], layout: str, *, ending: str = ".nii.gz"
) -> Path:
    """Rebuild ``<root>/dataset.json`` of an ``msd`` or ``nnunet`` dataset from its files.

    Fields already present and not derived from the files (``name``, ``description``, ...) are
    kept; the case lists and counts are recomputed.
    """
    root = Path(root)
    path = root / "dataset.json"
    with _locked(root):
        data: dict[str, Any] = {}
        if path.is_file():
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text(encoding="utf-8-sig"))
        labelled = set(_cases_in(root / "labelsTr", ending))
        if layout == "msd":
            train = [c for c in _cases_in(root / "imagesTr", ending) if c in labelled]
            test = _cases_in(root / "imagesTs", ending)
            data.setdefault("name", "BrainTumour")
            data.setdefault("description", "Gliomas: tumour and oedema segmentation")
            data.setdefault("tensorImageSize", "4D")
            data["modality"] = {str(i): name for i, (_, name) in enumerate(MSD_CHANNELS)}
            data["labels"] = {
                "0": "background",
                "1": "edema",
                "2": "non-enhancing tumor",
                "3": "enhancing tumour",
            }
            data["numTraining"] = len(train)
            data["numTest"] = len(test)
            data["training"] = [
                {"image": f"./imagesTr/{c}{ending}", "label": f"./labelsTr/{c}{ending}"}
                for c in train
            ]
            data["test"] = [f"./imagesTs/{c}{ending}" for c in test]
        elif layout == "nnunet":
            stems = _cases_in(root / "imagesTr", ending)
            train = sorted({strip_nifti_suffix(s)[:-5] for s in stems if s.endswith("_0000")})
            data["channel_names"] = {str(i): name for i, (_, name) in enumerate(NNUNET_CHANNELS)}
            # nnU-Net's own BraTS conversion (Dataset137_BraTS2021): region-based training on
            # labels 1 edema, 2 necrosis, 3 enhancing.
            data["labels"] = {
                "background": 0,
                "whole tumor": [1, 2, 3],
                "tumor core": [2, 3],
                "enhancing tumor": [3],
            }
            data["regions_class_order"] = [1, 2, 3]
            data["numTraining"] = len(train)
            data["file_ending"] = ending
            data.setdefault("name", "BraTS")
        else:
            raise ValueError(f"layout {layout!r} has no dataset.json")
        _write_json(data, path)
    return path
