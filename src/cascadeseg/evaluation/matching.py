"""Which file is which case: label-map file names to case ids, references and predictions found.

Evaluation pairs a prediction with its reference by case id. Tools name the same case's label map
in different ways: the official BraTS evaluation takes references ``<id>-seg.nii.gz`` and
predictions ``<id>.nii.gz``; BraTS 2017-2021 references are ``<id>_seg.nii.gz``; cascadeseg,
nnU-Net and MSD write ``<id>.nii.gz``. One rule, :func:`case_id_from_label_file`, turns every such
file name into its case id (the NIfTI ending and one trailing role tag such as ``-seg`` removed),
on both sides, so any of these names meets any other.

References come from a dataset folder in any layout the readers know
(:func:`cascadeseg.data.layouts.discover_cases`), or from a "flat" folder of label maps: files
directly inside it, or one per case sub-folder (``<id>/<id>-seg.nii.gz``, ``<id>/seg.nii.gz``).
Predictions are the label maps directly inside the prediction folder; the other outputs of
``cascadeseg predict`` (``<id>_probabilities.nii.gz``, ``<id>_uncertainty.nii.gz``, ``<id>.json``)
are not predictions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cascadeseg.data.layouts import detect_layout, discover_cases
from cascadeseg.data.nifti import is_nifti, strip_nifti_suffix
from cascadeseg.errors import InputError

#: Role tags a label-map file name may carry after its case id (case-insensitive), joined to it
#: by ``-``, ``_`` or ``.``: ``BraTS-GLI-00000-000-seg``, ``BraTS2021_00000_seg``, ``x_pred``.
LABEL_TAGS: tuple[str, ...] = (
    "seg",
    "segm",
    "segmentation",
    "label",
    "labels",
    "gt",
    "pred",
    "prediction",
)
#: Tags of the other NIfTI outputs ``cascadeseg predict`` writes beside its label maps.
AUXILIARY_TAGS: tuple[str, ...] = ("probabilities", "uncertainty")

_TAG = re.compile(r"^(?P<case>.+?)[-_.](?P<tag>{})$".format("|".join(LABEL_TAGS)), re.IGNORECASE)
_AUXILIARY = re.compile(r"[-_.]({})$".format("|".join(AUXILIARY_TAGS)), re.IGNORECASE)
# Images for overlays, kept with a reference: FLAIR and T1ce (3D), or the 4D image of MSD.
_IMAGE_KEYS = ("flair", "t1ce", "image")


@dataclass(frozen=True)
class ReferenceItem:
    """One reference label map.

    Attributes:
        case_id: the case id predictions are matched by.
        seg: path of the reference label map.
        convention: its label convention, ``None`` to detect it from the values.
        images: image files for overlays (``flair``, ``t1ce``, or ``image`` for a 4D file).
        layout: the layout the reference came from (``flat`` or a reader's layout name).
        channels: for a 4D ``image``, modality -> channel index (from the reader).
    """

    case_id: str
    seg: Path
    convention: str | None
    images: dict[str, Path] = field(default_factory=dict)
    layout: str = "flat"
    channels: dict[str, int] = field(default_factory=dict)


def case_id_from_label_file(name: str) -> str:
    """The case id a label-map file name stands for.

    The NIfTI ending goes, then one trailing role tag of :data:`LABEL_TAGS` with its separator:
    ``BraTS-GLI-00000-000-seg.nii.gz``, ``BraTS-GLI-00000-000.nii.gz`` and
    ``BraTS-GLI-00000-000_SEG.nii`` all give ``BraTS-GLI-00000-000``. A name that is only a tag
    (``seg.nii.gz``) is returned as the tag; the caller decides (a case folder's name).
    """
    stem = strip_nifti_suffix(Path(name).name)
    match = _TAG.match(stem)
    return match["case"] if match else stem


def is_auxiliary_output(name: str) -> bool:
    """Whether a file is one of predict's probability / uncertainty maps, not a label map."""
    return bool(_AUXILIARY.search(strip_nifti_suffix(Path(name).name)))


def _visible(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from exc


def _add(found: dict[str, Path], case_id: str, path: Path) -> None:
    if case_id in found:
        raise InputError(
            f"{path.parent}: two label maps for case {case_id!r}: {found[case_id].name}, "
            f"{path.name}"
        )
    found[case_id] = path


def _case_folder_label(folder: Path) -> Path | None:
    """The label map of a case folder: the file whose case id is the folder's name, or ``seg``.

    Raises:
        InputError: two such files.
    """
    found: dict[str, Path] = {}
    for path in _visible(folder):
        if path.is_file() and is_nifti(path):
            case_id = case_id_from_label_file(path.name)
            if case_id == folder.name or case_id.lower() in LABEL_TAGS:
                _add(found, folder.name, path)
    return found.get(folder.name)


def label_files(folder: Path, *, nested: bool = False) -> dict[str, Path]:
    """``{case_id: path}`` of the label maps in ``folder``, by :func:`case_id_from_label_file`.

    Args:
        folder: the folder.
        nested: also one label map per case sub-folder, or per case folder one level deeper
            (group folders such as ``HGG/``, ``LGG/``): in ``<id>/`` the file whose case id is
            ``<id>`` (``<id>-seg.nii.gz``, ``<id>_seg.nii``, ``<id>.nii.gz``) or a bare
            ``seg.nii.gz``; the case's other files (images) are not label maps.

    Raises:
        InputError: two files give the same case id, or the folder cannot be listed.
    """
    found: dict[str, Path] = {}
    entries = _visible(folder)
    for path in entries:
        if path.is_file() and is_nifti(path) and not is_auxiliary_output(path.name):
            _add(found, case_id_from_label_file(path.name), path)
    if not nested:
        return found
    for sub in (p for p in entries if p.is_dir()):
        label = _case_folder_label(sub)
        if label is not None:
            _add(found, sub.name, label)
            continue
        for case_folder in (p for p in _visible(sub) if p.is_dir()):  # a group of cases
            label = _case_folder_label(case_folder)
            if label is not None:
                _add(found, case_folder.name, label)
    return found


def find_predictions(pred_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``{case_id: path}`` of the label maps directly in ``pred_dir``.

    ``<id>.nii.gz``, ``<id>-seg.nii.gz``, ``<id>_seg.nii`` ... (see
    :func:`case_id_from_label_file`); predict's ``_probabilities`` / ``_uncertainty`` maps are
    skipped.

    Raises:
        InputError: the folder does not exist, or two files name the same case.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        what = "is not a folder" if pred_dir.exists() else "prediction folder not found"
        raise InputError(f"{pred_dir}: {what}")
    return label_files(pred_dir)


def _detect_reference_layout(ref: Path) -> str:
    """``flat`` or a reader's layout name for a reference folder (see :func:`find_references`)."""
    has_files = any(p.is_file() and is_nifti(p) for p in _visible(ref))
    try:
        # A folder of NIfTI files may still be one BraTS case folder (<id>_flair ... <id>_seg).
        return detect_layout(ref)
    except InputError:
        if has_files or label_files(ref, nested=True):
            return "flat"
        raise


def _dataset_references(ref: Path, layout: str, convention: str | None) -> list[ReferenceItem]:
    items = []
    for case_ref in discover_cases(ref, layout=layout, label_convention=convention):
        seg = case_ref.files.get("seg")
        if seg is None:  # a case without segmentation cannot be a reference
            continue
        items.append(
            ReferenceItem(
                case_id=case_ref.case_id,
                seg=Path(seg),
                convention=case_ref.label_convention,
                images={k: Path(v) for k, v in case_ref.files.items() if k in _IMAGE_KEYS},
                layout=case_ref.layout,
                channels=dict(case_ref.extra.get("channels") or {}),
            )
        )
    return items


def find_references(
    ref: str | os.PathLike[str],
    *,
    ref_layout: str | None = None,
    ref_convention: str | None = None,
) -> list[ReferenceItem]:
    """The reference label maps of a dataset folder (any layout) or of a flat folder.

    Args:
        ref: a dataset folder the readers know, or a folder of label maps (``<id>.nii.gz``,
            ``<id>-seg.nii.gz``, ``<id>_seg.nii.gz``, directly or one per case sub-folder).
        ref_layout: ``"flat"``, a reader's layout name, or ``None``: a dataset layout when the
            readers recognise one (also a single BraTS case folder), else flat.
        ref_convention: label convention of the references; ``None`` takes the layout's (flat
            folders: detected per file from the values).

    Raises:
        InputError: the folder is missing, empty, or no case has a segmentation.
    """
    ref = Path(ref)
    if not ref.is_dir():
        what = "is not a folder" if ref.exists() else "reference folder not found"
        raise InputError(f"{ref}: {what}")
    layout = ref_layout or _detect_reference_layout(ref)
    if layout == "flat":
        items = [
            ReferenceItem(case_id, path, ref_convention, {}, "flat")
            for case_id, path in label_files(ref, nested=True).items()
        ]
    else:
        items = _dataset_references(ref, layout, ref_convention)
    if not items:
        raise InputError(f"{ref}: no reference label maps found")
    return items
