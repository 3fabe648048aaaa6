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

Layouts (:data:`LAYOUTS`):

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
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from cascadeseg.data.case import MODALITIES, Case, Meta
from cascadeseg.data.labels import (
    CONVENTIONS,
    ED,
    ET,
    NCR,
    NUM_CLASSES,
    from_internal,
    get_convention,
    to_internal,
)
from cascadeseg.data.nifti import (
    NiftiInfo,
    check_limits,
    is_nifti,
    load_nifti,
    load_nifti_header,
    read_header,
    save_nifti,
)
from cascadeseg.data.nifti import strip_nifti_suffix as _strip
from cascadeseg.data.validate import (
    as_volume,
    check_channel_count,
    check_ref,
    check_same_geometry,
    require_cases,
    validate_case,
    volume_shape,
    warn_if_wrapped,
)
from cascadeseg.errors import InputError

#: Supported layouts and what they look like on disk.
LAYOUTS: dict[str, str] = {
    "brats2021": "BraTS 2017-2021: <case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz], optional HGG/LGG",
    "brats2023": "BraTS 2023+: <case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz (GLI/SSA/MET/PED/MEN)",
    "msd": "Medical Segmentation Decathlon Task01: imagesTr/ 4D, labelsTr/, dataset.json",
    "nnunet": "nnU-Net raw: imagesTr/<case>_000{0..3}.nii.gz, labelsTr/, dataset.json",
    "files": "one case given as four explicit files (FLAIR, T1, T1ce, T2) and an optional seg",
}

#: File naming of the BraTS layouts: separator between case id and suffix, and the suffix of each
#: modality (and ``seg``). Shared with :mod:`cascadeseg.data.writers`.
BRATS_FILE_NAMES: dict[str, tuple[str, dict[str, str]]] = {
    "brats2021": ("_", {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2", "seg": "seg"}),
    "brats2023": ("-", {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}),
}

#: Label convention each layout uses when nothing else says (MSD and nnU-Net: see dataset.json).
DEFAULT_CONVENTION: dict[str, str] = {
    "brats2021": "brats2021",
    "brats2023": "brats2023",
    "msd": "msd",
    "nnunet": "nnunet_brats",
    "files": "brats2021",
}

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

_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_GROUP_NAMES = {"hgg", "lgg"}


@dataclass(frozen=True)
class CaseRef:
    """Where one case's files are, before anything is read.

    Attributes:
        case_id: identifier of the case (names outputs ``<case_id>.nii.gz``).
        files: paths by key: ``flair``, ``t1``, ``t1ce``, ``t2`` (3D files) or ``image`` (one 4D
            file, MSD), and optionally ``seg``.
        layout: name of the layout (a key of :data:`LAYOUTS`).
        label_convention: convention of the ``seg`` file (a key of ``labels.CONVENTIONS``).
        extra: provenance and reading hints: ``grade`` (``HGG``/``LGG``), ``group`` (another
            enclosing folder), ``channels`` (modality -> channel index of a 4D ``image``),
            ``dataset_json``, ``problems`` (messages about missing or duplicated files, raised by
            :func:`read_case`).
    """

    case_id: str
    files: dict[str, Path]
    layout: str
    label_convention: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        # The dict fields are not hashable; case id, layout and files identify a case.
        return hash((self.case_id, self.layout, tuple(sorted(self.files.items()))))


# --------------------------------------------------------------------------------------------
# names


def modality_from_name(name: str) -> str | None:
    """The modality (``flair``, ``t1``, ``t1ce``, ``t2``) a channel or file name denotes, or None.

    Case-insensitive, ignoring spaces, ``-``, ``_`` and ``.``: ``"T2-FLAIR"``, ``"t2f"`` and
    ``"Flair"`` are FLAIR; ``"T1w"``/``"t1n"``/``"native"`` T1; ``"T1Gd"``/``"t1c"``/``"contrast"``
    T1ce; ``"T2w"`` T2.
    """
    key = re.sub(r"[\s_\-.]", "", name.lower())
    return _SYNONYM_TO_MODALITY.get(key)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", str(name).lower()).replace("tumour", "tumor")


def _is_hidden(path: Path) -> bool:
    # "._BRATS_001.nii.gz": macOS AppleDouble files shipped inside the MSD Task01 archive.
    return path.name.startswith(".")


def _nifti_files(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if not _is_hidden(p) and is_nifti(p.name) and p.is_file()]


def _display_suffix(paths: Iterable[Path]) -> str:
    return ", ".join(p.name for p in paths)


# --------------------------------------------------------------------------------------------
# BraTS folders


def _brats_kind(folder: Path) -> str | None:
    """``brats2021``/``brats2023`` when ``folder`` holds files named like a case of that layout."""
    kinds = set()
    for path in _nifti_files(folder):
        stem = _strip(path.name).lower()
        for layout, (sep, suffixes) in BRATS_FILE_NAMES.items():
            if any(stem.endswith(sep + s) for k, s in suffixes.items() if k != "seg"):
                kinds.add(layout)
    if len(kinds) == 1:
        return kinds.pop()
    if len(kinds) > 1:
        return "mixed"
    return None


def _brats_case_folders(root: Path) -> list[tuple[Path, str | None, str]]:
    """Case folders under ``root``: ``(folder, enclosing group or None, layout)``.

    ``root`` itself may be one case; otherwise its sub-folders are cases, or groups of cases one
    level deeper (``HGG/``, ``LGG/`` of BraTS 2017-2019, or an archive's top folder).
    """
    kind = _brats_kind(root)
    if kind is not None:
        return [(root, None, kind)]
    found: list[tuple[Path, str | None, str]] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p)):
        kind = _brats_kind(child)
        if kind is not None:
            found.append((child, None, kind))
            continue
        for grandchild in sorted(p for p in child.iterdir() if p.is_dir() and not _is_hidden(p)):
            kind = _brats_kind(grandchild)
            if kind is not None:
                found.append((grandchild, child.name, kind))
    return found


def _brats_ref(folder: Path, group: str | None, layout: str, convention: str) -> CaseRef:
    """Match the files of one BraTS case folder to modalities; record problems, don't raise."""
    sep, suffixes = BRATS_FILE_NAMES[layout]
    matches: dict[str, list[Path]] = {key: [] for key in suffixes}
    segm_candidates: list[Path] = []
    for path in _nifti_files(folder):
        stem = _strip(path.name).lower()
        for key, suffix in suffixes.items():
            if stem.endswith(sep + suffix):
                matches[key].append(path)
                break
        else:
            # BraTS 2020 case 355 ships its segmentation as W39_1998.09.19_Segm.nii.
            if "segm" in stem:
                segm_candidates.append(path)
    case_id = folder.name
    files: dict[str, Path] = {}
    problems: list[str] = []
    missing = []
    for key in (*MODALITIES, "seg"):
        paths = matches[key]
        if len(paths) > 1:
            problems.append(f"{folder}: duplicated {key} files: {_display_suffix(paths)}")
        elif paths:
            files[key] = paths[0]
        elif key != "seg":
            missing.append(key)
    if "seg" not in files and not matches["seg"]:
        if len(segm_candidates) == 1:
            files["seg"] = segm_candidates[0]
        elif len(segm_candidates) > 1:
            problems.append(
                f"{folder}: several possible segmentations: {_display_suffix(segm_candidates)}"
            )
    if missing:
        expected = ", ".join(f"{case_id}{sep}{suffixes[k]}.nii.gz" for k in missing)
        problems.insert(0, f"{folder}: missing {', '.join(missing)} file(s) (expected {expected})")
    extra: dict[str, Any] = {}
    if group is not None:
        extra["grade" if group.lower() in _GROUP_NAMES else "group"] = group
    if problems:
        extra["problems"] = tuple(problems)
    return CaseRef(case_id, files, layout, convention, extra)


def _discover_brats(root: Path, layout: str, convention: str) -> list[CaseRef]:
    refs = []
    for folder, group, kind in _brats_case_folders(root):
        if kind == layout:
            refs.append(_brats_ref(folder, group, layout, convention))
        elif kind == "mixed":
            ref = _brats_ref(folder, group, layout, convention)
            problems = (f"{folder}: mixes BraTS 2017-2021 and 2023+ file names",)
            refs.append(CaseRef(ref.case_id, ref.files, layout, convention, {"problems": problems}))
    return refs


# --------------------------------------------------------------------------------------------
# dataset.json (MSD and nnU-Net)


def _read_dataset_json(root: Path) -> tuple[dict[str, Any], Path]:
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(f"{path}: file not found (needed for the channel order and labels)")
    try:
        # utf-8-sig: files saved by some Windows editors start with a byte order mark.
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data, path


def channels_from_dataset_json(data: dict[str, Any], path: Path | str) -> dict[str, int]:
    """Modality -> channel index from ``channel_names`` (nnU-Net v2) or ``modality`` (MSD, v1).

    Raises:
        InputError: the entry is missing, a name is not a known modality, a modality repeats, or
            there are not exactly four channels.
    """
    names = data.get("channel_names", data.get("modality"))
    if not isinstance(names, dict) or not names:
        raise InputError(f"{path}: no 'channel_names' or 'modality' entry naming the channels")
    channels: dict[str, int] = {}
    for index, name in names.items():
        modality = modality_from_name(str(name))
        if modality is None:
            raise InputError(
                f"{path}: channel {index} {name!r} is not one of FLAIR, T1, T1ce, T2 "
                f"(or t2f, t1n, t1c/T1Gd, t2w)"
            )
        if modality in channels:
            raise InputError(
                f"{path}: channels {channels[modality]} and {index} are both {modality}"
            )
        try:
            channels[modality] = int(index)
        except ValueError:
            raise InputError(f"{path}: channel index {index!r} is not a number") from None
    if len(channels) != len(MODALITIES):
        raise InputError(
            f"{path}: {len(channels)} channels listed, expected 4 (FLAIR, T1, T1ce, T2)"
        )
    if sorted(channels.values()) != list(range(len(MODALITIES))):
        raise InputError(f"{path}: channel indices {sorted(channels.values())}, expected 0-3")
    return channels


def _class_of_label_name(name: str) -> int | None:
    """Internal class a dataset.json label name stands for (None: unknown)."""
    key = _norm(name)
    if key in {"background", "bg", "healthy", "normal"}:
        return 0
    # "non-enhancing" contains "enhancing": test it first.
    if "nonenhancing" in key or "necro" in key or key in {"ncr", "net", "netc", "ncrnet"}:
        return NCR
    if "edema" in key or "oedema" in key or key in {"ed", "snfh"}:
        return ED
    if "enhancing" in key or key == "et":
        return ET
    return None


def _region_of_name(name: str) -> str | None:
    key = _norm(name)
    if key in {"wholetumor", "wt", "whole"}:
        return "WT"
    if key in {"tumorcore", "tc", "core"}:
        return "TC"
    if key in {"enhancingtumor", "et", "enhancing"}:
        return "ET"
    return None


def _mapping_from_labels(labels: dict[str, Any], path: Path | str) -> dict[int, int]:
    """Source value -> internal class from a dataset.json ``labels`` entry.

    Three forms are understood: MSD / nnU-Net v1 ``{"0": "background", "1": "edema", ...}``,
    nnU-Net v2 ``{"background": 0, "edema": 1, ...}``, and nnU-Net v2 region-based
    ``{"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}``
    (used with ``regions_class_order``): a value in WT only is edema, in TC but not ET necrosis,
    in ET enhancing tumour.
    """
    numbered = [str(k).strip().isdigit() for k in labels]
    if all(numbered) and all(isinstance(v, str) for v in labels.values()):
        if all(_is_number_text(v) for v in labels.values()):
            raise InputError(
                f"{path}: 'labels' maps numbers to numbers ({json.dumps(labels)}); expected label "
                f'names with their values, e.g. {{"background": 0, "edema": 1}}'
            )
        pairs: list[tuple[Any, str]] = [(int(k), str(v)) for k, v in labels.items()]
    else:
        # Values written as text ("0") are read as the numbers they spell.
        pairs = [(_label_value(v, str(k), path), str(k)) for k, v in labels.items()]
    if any(isinstance(value, (list, tuple)) for value, _ in pairs) or any(
        _class_of_label_name(name) is None and _region_of_name(name) for _, name in pairs
    ):
        return _mapping_from_regions(pairs, path)
    mapping: dict[int, int] = {}
    for value, name in pairs:
        cls = _class_of_label_name(name)
        if cls is None or not isinstance(value, int):
            raise InputError(
                f"{path}: label {name!r} = {value!r} is not background, necrosis, edema or "
                f"enhancing tumour; pass the label convention explicitly"
            )
        mapping[value] = cls
    return mapping


def _is_number_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip().isdigit()


def _label_value(value: Any, name: str, path: Path | str) -> int | list[int]:
    """A dataset.json label value as a number (or list): ``1``, ``"1"``, ``1.0``, ``[1, "2"]``.

    Raises:
        InputError: a value that is not a whole non-negative number or a list of them.
    """
    if isinstance(value, list) and value:
        return [int(_label_value(v, name, path)) for v in value]  # type: ignore[arg-type]
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if _is_number_text(value):
        return int(value)
    raise InputError(
        f"{path}: label {name!r} has the value {json.dumps(value)}; expected a label number "
        f"such as 0 or 1 (or a list of them)"
    )


# (in WT, in TC, in ET) -> internal class; other combinations break the nesting ET < TC < WT.
_CLASS_OF_REGIONS: dict[tuple[bool, ...], int] = {
    (True, False, False): ED,
    (True, True, False): NCR,
    (True, True, True): ET,
}


def _mapping_from_regions(pairs: list[tuple[Any, str]], path: Path | str) -> dict[int, int]:
    regions: dict[str, set[int]] = {}
    for value, name in pairs:
        values = {int(v) for v in value} if isinstance(value, (list, tuple)) else {int(value)}
        if values == {0} or _norm(name) == "background":
            continue
        region = _region_of_name(name)
        if region is None:
            raise InputError(
                f"{path}: region {name!r} is not whole tumour, tumour core or enhancing"
            )
        regions[region] = values
    if set(regions) != {"WT", "TC", "ET"}:
        raise InputError(f"{path}: region-based labels need WT, TC and ET, found {sorted(regions)}")
    mapping = {0: 0}
    for value in sorted(regions["WT"] | regions["TC"] | regions["ET"]):
        inside = tuple(value in regions[r] for r in ("WT", "TC", "ET"))
        cls = _CLASS_OF_REGIONS.get(inside)
        if cls is None:
            raise InputError(f"{path}: label {value} breaks the nesting ET in TC in WT")
        mapping[value] = cls
    return mapping


def convention_from_dataset_json(
    data: dict[str, Any], path: Path | str, prefer: Sequence[str] = ("msd", "nnunet_brats")
) -> str:
    """Name of the known label convention that ``data["labels"]`` describes.

    Raises:
        InputError: no ``labels`` entry, unknown names, or a mapping no known convention has.
    """
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: no 'labels' entry")
    mapping = _mapping_from_labels(labels, path)
    for name in (*prefer, *sorted(CONVENTIONS)):
        if name != "internal" and CONVENTIONS[name].to_internal == mapping:
            return name
    if CONVENTIONS["internal"].to_internal == mapping:
        return "internal"
    raise InputError(
        f"{path}: labels {labels} match no known label convention "
        f"({', '.join(sorted(CONVENTIONS))}); pass one explicitly"
    )


def _label_file(labels_dir: Path, case_id: str, endings: Sequence[str]) -> Path | None:
    for ending in endings:
        candidate = labels_dir / f"{case_id}{ending}"
        if candidate.is_file():
            return candidate
    return None


def _discover_msd(root: Path, convention: str | None) -> list[CaseRef]:
    data, json_path = _read_dataset_json(root)
    channels = channels_from_dataset_json(data, json_path)
    convention = convention or convention_from_dataset_json(data, json_path, ("msd",))
    refs = []
    for image in _nifti_files(root / "imagesTr"):
        case_id = _strip(image.name)
        files = {"image": image}
        seg = _label_file(root / "labelsTr", case_id, (".nii.gz", ".nii"))
        if seg is not None:
            files["seg"] = seg
        extra = {"channels": dict(channels), "dataset_json": json_path}
        refs.append(CaseRef(case_id, files, "msd", convention, extra))
    return refs


def _discover_nnunet(root: Path, convention: str | None) -> list[CaseRef]:
    data, json_path = _read_dataset_json(root)
    channels = channels_from_dataset_json(data, json_path)
    modality_of = {index: modality for modality, index in channels.items()}
    convention = convention or convention_from_dataset_json(data, json_path, ("nnunet_brats",))
    ending = str(data.get("file_ending", ".nii.gz"))
    by_case: dict[str, dict[int, list[Path]]] = {}
    strays: list[Path] = []
    for image in _nifti_files(root / "imagesTr"):
        if not image.name.endswith(ending):
            continue
        match = _NNUNET_CHANNEL.match(image.name[: -len(ending)])
        if match is None:
            strays.append(image)
            continue
        by_case.setdefault(match["case"], {}).setdefault(int(match["channel"]), []).append(image)
    refs = []
    for case_id in sorted(by_case):
        problems = []
        files: dict[str, Path] = {}
        for index, paths in sorted(by_case[case_id].items()):
            if index not in modality_of:
                problems.append(
                    f"{paths[0]}: channel {index:04d} is not listed in {json_path.name} "
                    f"(which names 4 channels): the case has the wrong channel count"
                )
            else:
                files[modality_of[index]] = paths[0]
        missing = [m for m in MODALITIES if m not in files]
        if missing:
            expected = ", ".join(f"{case_id}_{channels[m]:04d}{ending}" for m in missing)
            problems.insert(
                0,
                f"{root / 'imagesTr'}: case {case_id} is missing {', '.join(missing)} ({expected})",
            )
        seg = _label_file(root / "labelsTr", case_id, (ending,))
        if seg is not None:
            files["seg"] = seg
        extra: dict[str, Any] = {"channels": dict(channels), "dataset_json": json_path}
        if problems:
            extra["problems"] = tuple(problems)
        refs.append(CaseRef(case_id, files, "nnunet", convention, extra))
    for stray in strays:
        problem = f"{stray}: not named <case>_<4-digit channel>{ending} as nnU-Net requires"
        refs.append(CaseRef(_strip(stray.name), {}, "nnunet", convention, {"problems": (problem,)}))
    return refs


# --------------------------------------------------------------------------------------------
# detection and discovery


def detect_layout(root: str | os.PathLike[str]) -> str:
    """The layout of a dataset folder (or of a single case folder).

    ``imagesTr/`` or ``dataset.json`` means MSD (4D images) or nnU-Net raw (``<case>_0000``
    3D channel files); otherwise BraTS case folders are recognised by their file names.

    Raises:
        InputError: the folder is missing, empty, holds no recognisable cases, or mixes layouts.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (for single files use read_files)")
    if (root / "imagesTr").is_dir() or (root / "dataset.json").is_file():
        images = _nifti_files(root / "imagesTr")
        if not images:
            raise InputError(f"{root / 'imagesTr'}: no cases found (no NIfTI images)")
        channel_named = all(_NNUNET_CHANNEL.match(_strip(p.name)) for p in images)
        if not channel_named:
            return "msd"
        # "<case>_0000" names are nnU-Net's, unless an MSD-style dataset happens to number its
        # cases with four digits: the first file's rank decides (3D channel file vs 4D image).
        try:
            ndim = len(load_nifti_header(images[0]).get_data_shape())
        except InputError:
            ndim = 3  # unreadable: read_case will name the file; the names say nnU-Net
        return "nnunet" if ndim == 3 else "msd"
    if not any(not _is_hidden(p) for p in root.iterdir()):
        raise InputError(f"{root}: no cases found (the folder is empty)")
    kinds = {kind for _, _, kind in _brats_case_folders(root)}
    if not kinds:
        raise InputError(
            f"{root}: no cases found (no BraTS case folders, no imagesTr/ or dataset.json)"
        )
    kinds.discard("mixed")
    if len(kinds) != 1:
        raise InputError(
            f"{root}: mixes BraTS 2017-2021 (_flair) and 2023+ (-t2f) case folders; "
            f"pass the layout explicitly"
        )
    return kinds.pop()


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
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    if layout == "files":
        raise InputError(f"{root}: the 'files' layout takes four explicit files (read_files)")
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    if label_convention is not None:
        get_convention(label_convention)
    if layout in BRATS_FILE_NAMES:
        refs = _discover_brats(root, layout, label_convention or DEFAULT_CONVENTION[layout])
    elif layout == "msd":
        refs = _discover_msd(root, label_convention)
    else:
        refs = _discover_nnunet(root, label_convention)
    require_cases(refs, root, layout)
    refs.sort(key=lambda r: r.case_id)
    for first, second in itertools.pairwise(refs):
        if first.case_id == second.case_id:
            where = [str(next(iter(r.files.values()), root)) for r in (first, second)]
            raise InputError(
                f"{root}: case id {first.case_id} appears twice ({where[0]}, {where[1]})"
            )
    return refs


# --------------------------------------------------------------------------------------------
# reading


def _read_headers(ref: CaseRef) -> dict[str, NiftiInfo]:
    """Read and compare the headers of every file of ``ref`` before any voxel data.

    Each header is checked against its file (:func:`cascadeseg.data.nifti.read_header`: affine,
    voxel cap, size); then shapes and affines are compared across the case, so that a file whose
    header disagrees with its siblings (a gzip bomb with a consistent header included) is rejected
    before anything is decompressed.

    Returns:
        The :class:`NiftiInfo` of each file, by the keys of ``ref.files``.
    """
    # Headers only; the voxel cap and the size checks come after the comparison, so a gzip bomb
    # whose (consistent) header disagrees with its siblings is reported as "shape differs".
    infos = {key: read_header(path, limits=False) for key, path in ref.files.items()}
    if "image" in infos:
        reference = infos["image"]
        check_channel_count(reference.path, reference.shape)
        grid = reference.shape[:3]
    else:
        reference = infos[MODALITIES[0]]
        grid = volume_shape(reference.shape, reference.path)
        for modality in MODALITIES[1:]:
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
    first = infos[MODALITIES[0]]
    image = np.empty((len(MODALITIES), *first.shape[:3]), dtype=np.float32)
    header = None
    for c, modality in enumerate(MODALITIES):
        info = infos[modality]
        # Stored values (int16 for BraTS): the cast to float32 happens in the copy below, in one
        # pass with the reordering from the file's Fortran order (measured ~2x faster than
        # converting first).
        data, _, file_header = load_nifti(info.path, info=info)
        data = as_volume(data, info.path)
        warn_if_wrapped(data, str(info.path))
        if c == 0:
            header = file_header
        image[c] = data
        del data
    return image, first.affine.copy(), header


def read_case(ref: CaseRef) -> Case:
    """Load, convert and validate one case.

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
    check_ref(ref)
    infos = _read_headers(ref)
    if "image" in ref.files:
        image, affine, header = _read_4d(infos["image"], ref)
    else:
        image, affine, header = _read_3d(infos)
    shape = tuple(int(s) for s in image.shape[1:])
    label = None
    seg = ref.files.get("seg")
    if seg is not None:
        raw, _, _ = load_nifti(seg, info=infos["seg"])
        raw = as_volume(raw, seg, what="label map")
        label = to_internal(raw, ref.label_convention, source=str(seg))
        del raw
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    extra = {k: v for k, v in ref.extra.items() if k != "problems"}
    meta = Meta(
        case_id=ref.case_id,
        affine=affine,
        spacing=spacing,  # type: ignore[arg-type]
        shape=shape,  # type: ignore[arg-type]
        source_layout=ref.layout,
        label_convention=ref.label_convention,
        header=header,
        files=dict(ref.files),
        extra=extra,
    )
    case = Case(image=image, label=label, meta=meta)
    validate_case(case)
    return case


def _case_id_from_file(path: Path) -> str:
    """``BraTS2021_00000_flair.nii.gz -> BraTS2021_00000``; ``x-t2f.nii.gz -> x``; else the stem."""
    stem = _strip(path.name)
    for sep, suffixes in BRATS_FILE_NAMES.values():
        for suffix in suffixes.values():
            if stem.lower().endswith(sep + suffix) and len(stem) > len(suffix) + 1:
                return stem[: -len(suffix) - 1]
    match = _NNUNET_CHANNEL.match(stem)
    return match["case"] if match else stem


def read_files(
    *,
    flair: str | os.PathLike[str],
    t1: str | os.PathLike[str],
    t1ce: str | os.PathLike[str],
    t2: str | os.PathLike[str],
    seg: str | os.PathLike[str] | None = None,
    case_id: str | None = None,
    label_convention: str | None = None,
) -> Case:
    """Read one case given as four explicit files (inference on one patient).

    Args:
        flair, t1, t1ce, t2: the modality files (3D, same grid).
        seg: optional segmentation.
        case_id: names the output; default: the FLAIR file name without its modality suffix.
        label_convention: convention of ``seg`` and of label maps written for this case. Default:
            ``brats2023`` when the FLAIR file is named ``*-t2f.nii*`` (BraTS 2023+), else
            ``brats2021``. (The file names decide, so a 2023 case gets 2023 labels back.)

    Returns:
        A validated :class:`Case` with ``meta.source_layout == "files"``.
    """
    paths = {"flair": Path(flair), "t1": Path(t1), "t1ce": Path(t1ce), "t2": Path(t2)}
    if seg is not None:
        paths["seg"] = Path(seg)
    if label_convention is None:
        stem = _strip(paths["flair"].name).lower()
        label_convention = "brats2023" if stem.endswith("-t2f") else DEFAULT_CONVENTION["files"]
    get_convention(label_convention)
    ref = CaseRef(case_id or _case_id_from_file(paths["flair"]), paths, "files", label_convention)
    return read_case(ref)


def load_dataset(
    root: str | os.PathLike[str],
    layout: str | None = None,
    label_convention: str | None = None,
    *,
    progress: bool = True,
) -> list[Case]:
    """Discover and read every case of a folder (small datasets; training uses the cache)."""
    refs = discover_cases(root, layout, label_convention)
    return [read_case(ref) for ref in tqdm(refs, desc="reading cases", disable=not progress)]


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
