"""The BraTS challenge layouts: one folder per case, one file per modality.

* ``brats2021`` (BraTS 2017-2021): ``[HGG|LGG/]<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``,
  labels 1 NCR, 2 ED, 4 ET;
* ``brats2023`` (GLI, SSA, MET, PED, MEN; BraTS 2024 post-treatment with the ``brats2024``
  convention): ``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii[.gz]``, labels 1 NCR, 2 ED, 3 ET.

A dataset folder holds case folders, or groups of them one level deeper (``HGG/``, ``LGG/`` of
BraTS 2017-2019, or an archive's top folder); a case folder on its own is a dataset of one case.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.layouts.base import (
    CaseRef,
    Layout,
    is_hidden,
    label_on_disk,
    names_of,
    nifti_files,
    save_image,
    save_label,
    stem,
)

#: File naming of the BraTS layouts: separator between case id and suffix, and the suffix of each
#: modality (and ``seg``).
BRATS_FILE_NAMES: dict[str, tuple[str, dict[str, str]]] = {
    "brats2021": ("_", {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2", "seg": "seg"}),
    "brats2023": ("-", {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}),
}

_GROUP_NAMES = {"hgg", "lgg"}
_MIXED = "mixed"


def brats_kind(folder: Path) -> str | None:
    """``brats2021``/``brats2023`` when ``folder`` holds files named like a case of that layout,
    ``"mixed"`` when it holds both, else None."""
    kinds = set()
    for path in nifti_files(folder):
        name = stem(path).lower()
        for layout, (sep, suffixes) in BRATS_FILE_NAMES.items():
            if any(name.endswith(sep + s) for k, s in suffixes.items() if k != "seg"):
                kinds.add(layout)
    if len(kinds) == 1:
        return kinds.pop()
    return _MIXED if kinds else None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p))


def case_folders(root: Path) -> list[tuple[Path, str | None, str]]:
    """Case folders under ``root``: ``(folder, enclosing group or None, kind)``.

    ``root`` itself may be one case; otherwise its sub-folders are cases, or groups of cases one
    level deeper. ``kind`` is that of :func:`brats_kind`.
    """
    kind = brats_kind(root)
    if kind is not None:
        return [(root, None, kind)]
    found: list[tuple[Path, str | None, str]] = []
    for child in _subfolders(root):
        kind = brats_kind(child)
        if kind is not None:
            found.append((child, None, kind))
            continue
        for grandchild in _subfolders(child):
            kind = brats_kind(grandchild)
            if kind is not None:
                found.append((grandchild, child.name, kind))
    return found


def _match_files(folder: Path, layout: str) -> tuple[dict[str, list[Path]], list[Path]]:
    """The files of ``folder`` by key (modalities and ``seg``), and other ``*segm*`` files."""
    sep, suffixes = BRATS_FILE_NAMES[layout]
    matches: dict[str, list[Path]] = {key: [] for key in suffixes}
    segm_candidates: list[Path] = []
    for path in nifti_files(folder):
        name = stem(path).lower()
        for key, suffix in suffixes.items():
            if name.endswith(sep + suffix):
                matches[key].append(path)
                break
        else:
            # BraTS 2020 case 355 ships its segmentation as W39_1998.09.19_Segm.nii.
            if "segm" in name:
                segm_candidates.append(path)
    return matches, segm_candidates


def _case_ref(folder: Path, group: str | None, layout: str, convention: str) -> CaseRef:
    """Match the files of one BraTS case folder to modalities; record problems, don't raise."""
    sep, suffixes = BRATS_FILE_NAMES[layout]
    matches, segm_candidates = _match_files(folder, layout)
    case_id = folder.name
    files: dict[str, Path] = {}
    problems: list[str] = []
    missing = []
    for key in (*MODALITIES, "seg"):
        paths = matches[key]
        if len(paths) > 1:
            problems.append(f"{folder}: duplicated {key} files: {names_of(paths)}")
        elif paths:
            files[key] = paths[0]
        elif key != "seg":
            missing.append(key)
    if "seg" not in files and not matches["seg"]:
        if len(segm_candidates) == 1:
            files["seg"] = segm_candidates[0]
        elif len(segm_candidates) > 1:
            problems.append(
                f"{folder}: several possible segmentations: {names_of(segm_candidates)}"
            )
    if missing:
        expected = ", ".join(f"{case_id}{sep}{suffixes[k]}.nii.gz" for k in missing)
        problems.insert(0, f"{folder}: missing {', '.join(missing)} file(s) (expected {expected})")
    extra: dict[str, Any] = {}
    if group is not None:
        extra["grade" if group.lower() in _GROUP_NAMES else "group"] = group
    if missing:
        extra["missing"] = tuple(missing)
    if problems:
        extra["problems"] = tuple(problems)
    return CaseRef(case_id, files, layout, convention, extra)


def _discover(root: Path, convention: str | None, *, layout: str) -> list[CaseRef]:
    """The cases of ``layout`` under ``root``; a folder mixing both namings is a case with a
    problem. The convention defaults to the layout's own (named as the layout)."""
    convention = convention or layout
    refs = []
    for folder, group, kind in case_folders(root):
        if kind == layout:
            refs.append(_case_ref(folder, group, layout, convention))
        elif kind == _MIXED:
            ref = _case_ref(folder, group, layout, convention)
            problems = (f"{folder}: mixes BraTS 2017-2021 and 2023+ file names",)
            refs.append(CaseRef(ref.case_id, ref.files, layout, convention, {"problems": problems}))
    return refs


def _detect(root: Path, *, layout: str) -> int:
    """1 when ``root`` holds case folders of ``layout``, or only folders that mix both namings
    (then both BraTS layouts match and the caller must choose), else 0."""
    kinds = {kind for _, _, kind in case_folders(root)}
    return int(layout in kinds or kinds == {_MIXED})


def _case_paths(
    case_id: str, root: Path, labelled: bool, ending: str, *, layout: str
) -> list[Path]:
    sep, suffixes = BRATS_FILE_NAMES[layout]
    keys = [*MODALITIES, "seg"] if labelled else list(MODALITIES)
    return [root / case_id / f"{case_id}{sep}{suffixes[k]}{ending}" for k in keys]


def _write(case: Case, root: Path, ending: str, *, layout: str) -> Path:
    seg = label_on_disk(case, layout)
    paths = _case_paths(case.case_id, root, seg is not None, ending, layout=layout)
    for c in range(len(MODALITIES)):
        save_image(case.image[c], case, paths[c])
    if seg is not None:
        save_label(seg, case, paths[len(MODALITIES)])
    return root / case.case_id


def _brats_layout(name: str, title: str, description: str) -> Layout:
    """The :class:`Layout` of one BraTS naming; its label convention has the layout's name."""
    return Layout(
        name=name,
        title=title,
        description=description,
        label_convention=name,
        detect=partial(_detect, layout=name),
        discover=partial(_discover, layout=name),
        looks_for="BraTS case folders",
        case_paths=partial(_case_paths, layout=name),
        write=partial(_write, layout=name),
    )


BRATS2021 = _brats_layout(
    "brats2021",
    "BraTS 2017-2021 (_flair)",
    "BraTS 2017-2021: <case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz], optional HGG/LGG",
)
BRATS2023 = _brats_layout(
    "brats2023",
    "BraTS 2023+ (-t2f)",
    "BraTS 2023+: <case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz (GLI/SSA/MET/PED/MEN)",
)


def convention_of_file_name(path: Path) -> str | None:
    """The convention of the BraTS layout whose naming of a modality ``path`` has
    (``x-t2f.nii.gz``, ``x-t1c.nii.gz`` -> ``brats2023``), or None."""
    name = stem(path).lower()
    for layout, (sep, suffixes) in BRATS_FILE_NAMES.items():
        if any(name.endswith(sep + suffixes[m]) for m in MODALITIES):
            return layout
    return None


def case_id_of_file_name(path: Path) -> str | None:
    """``BraTS2021_00000_flair.nii.gz -> BraTS2021_00000``; ``x-t2f.nii.gz -> x``; else None."""
    name = stem(path)
    for sep, suffixes in BRATS_FILE_NAMES.values():
        for suffix in suffixes.values():
            if name.lower().endswith(sep + suffix) and len(name) > len(suffix) + 1:
                return name[: -len(suffix) - 1]
    return None
