"""The ``files`` layout: one case given as four explicit files (inference on one patient)."""

from __future__ import annotations

import os
from pathlib import Path

from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.labels import get_convention
from cascadeseg.data.layouts.base import CaseRef, Layout, stem
from cascadeseg.data.layouts.brats import case_id_of_file_name, convention_of_file_name
from cascadeseg.data.layouts.dataset_json import NNUNET_CHANNEL
from cascadeseg.data.layouts.reading import read_case
from cascadeseg.errors import InputError

FILES = Layout(
    name="files",
    title="explicit files",
    description=(
        "one case given as four explicit files (FLAIR, T1, T1ce, T2) and an optional seg "
        "(read_files)"
    ),
    label_convention="brats2021",
)


def _case_id_from_file(path: Path) -> str:
    """``BraTS2021_00000_flair.nii.gz -> BraTS2021_00000``; ``x-t2f.nii.gz -> x``;
    ``x_0003.nii.gz -> x``; else the stem."""
    case_id = case_id_of_file_name(path)
    if case_id is not None:
        return case_id
    match = NNUNET_CHANNEL.match(stem(path))
    return match["case"] if match else stem(path)


def read_files(
    *,
    flair: str | os.PathLike[str] | None,
    t1: str | os.PathLike[str] | None,
    t1ce: str | os.PathLike[str] | None,
    t2: str | os.PathLike[str] | None,
    seg: str | os.PathLike[str] | None = None,
    case_id: str | None = None,
    label_convention: str | None = None,
    allow_missing: bool = False,
) -> Case:
    """Read one case given as four explicit files (inference on one patient).

    Args:
        flair, t1, t1ce, t2: the modality files (3D, same grid); ``None`` for a missing one
            (with ``allow_missing`` only).
        seg: optional segmentation.
        case_id: names the output; default: the first modality file's name without its modality
            suffix.
        label_convention: convention of ``seg`` and of label maps written for this case. Default:
            ``brats2023`` when the first modality file is named like BraTS 2023+ (``*-t2f``,
            ``*-t1n``, ...), else ``brats2021``. (The file names decide, so a 2023 case gets 2023
            labels back.)
        allow_missing: accept ``None`` for some modalities: their channels are zeros and
            ``Case.missing`` names them (:func:`cascadeseg.data.layouts.read_case`).

    Returns:
        A validated :class:`Case` with ``meta.source_layout == "files"``.

    Raises:
        InputError: a modality is ``None`` without ``allow_missing``, or all four are.
    """
    given = {"flair": flair, "t1": t1, "t1ce": t1ce, "t2": t2}
    paths = {m: Path(p) for m, p in given.items() if p is not None}
    missing = tuple(m for m in MODALITIES if m not in paths)
    if not paths or (missing and not allow_missing):
        raise InputError(
            f"{case_id or 'case'}: no {', '.join(missing)} file given (this needs all four: "
            "FLAIR, T1, T1ce, T2)"
        )
    first = next(iter(paths.values()))
    if seg is not None:
        paths["seg"] = Path(seg)
    if label_convention is None:
        label_convention = convention_of_file_name(first) or FILES.label_convention
    get_convention(label_convention)
    extra = {"missing": missing} if missing else {}
    ref = CaseRef(case_id or _case_id_from_file(first), paths, "files", label_convention, extra)
    return read_case(ref, allow_missing=allow_missing)
