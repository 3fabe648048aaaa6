"""What the MSD and nnU-Net layouts share: ``imagesTr/``, ``labelsTr/`` and ``dataset.json``.

Reading: the channel order (``channel_names`` or ``modality``) and the label convention that the
``labels`` entry describes, in any of the three forms the two projects write. Writing:
``dataset.json`` rebuilt from the files present, under a lock where the platform has one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.labels import CONVENTIONS, ED, ET, NCR
from cascadeseg.data.layouts.base import (
    CasePaths,
    UpdateIndex,
    label_on_disk,
    modality_from_name,
    nifti_files,
    save_image,
    save_label,
    stem,
)
from cascadeseg.data.nifti import load_nifti_header
from cascadeseg.errors import InputError
from cascadeseg.fsutil import write_json_atomic

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: no advisory locks; sequential writers are still fine
    fcntl = None

#: ``<case>_<4-digit channel>``: nnU-Net's name of a case's channel file (without the ending).
NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# --------------------------------------------------------------------------------------------
# detection


def training_images(root: Path) -> list[Path] | None:
    """The NIfTI files of ``root/imagesTr``; None when ``root`` has neither ``imagesTr/`` nor
    ``dataset.json`` (not a dataset of this family).

    Raises:
        InputError: the family's markers are there but ``imagesTr/`` holds no image.
    """
    if not ((root / "imagesTr").is_dir() or (root / "dataset.json").is_file()):
        return None
    images = nifti_files(root / "imagesTr")
    if not images:
        raise InputError(f"{root / 'imagesTr'}: no cases found (no NIfTI images)")
    return images


def named_like_nnunet(images: Sequence[Path]) -> bool:
    """Whether ``images`` are nnU-Net channel files (``<case>_0000``, 3D) rather than MSD's 4D
    images: the names decide, unless an MSD-style dataset numbers its cases with four digits,
    where the first file's rank does."""
    if not all(NNUNET_CHANNEL.match(stem(p)) for p in images):
        return False
    try:
        ndim = len(load_nifti_header(images[0]).get_data_shape())
    except InputError:
        ndim = 3  # unreadable: read_case will name the file; the names say nnU-Net
    return ndim == 3


def label_file(labels_dir: Path, case_id: str, endings: Sequence[str]) -> Path | None:
    """``labels_dir/<case_id><ending>`` for the first ending that exists, else None."""
    for ending in endings:
        candidate = labels_dir / f"{case_id}{ending}"
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# reading dataset.json


def read_dataset_json(root: Path) -> tuple[dict[str, Any], Path]:
    """``root/dataset.json`` as a dict, and its path.

    Raises:
        InputError: missing, not valid JSON, or not a JSON object.
    """
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


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", str(name).lower()).replace("tumour", "tumor")


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


def _label_pairs(labels: dict[str, Any], path: Path | str) -> list[tuple[Any, str]]:
    """``(value, name)`` of every entry of a ``labels`` dict, whichever way round it is written."""
    numbered = [str(k).strip().isdigit() for k in labels]
    if all(numbered) and all(isinstance(v, str) for v in labels.values()):
        if all(_is_number_text(v) for v in labels.values()):
            raise InputError(
                f"{path}: 'labels' maps numbers to numbers ({json.dumps(labels)}); expected label "
                f'names with their values, e.g. {{"background": 0, "edema": 1}}'
            )
        return [(int(k), str(v)) for k, v in labels.items()]
    # Values written as text ("0") are read as the numbers they spell.
    return [(_label_value(v, str(k), path), str(k)) for k, v in labels.items()]


def _mapping_from_labels(labels: dict[str, Any], path: Path | str) -> dict[int, int]:
    """Source value -> internal class from a dataset.json ``labels`` entry.

    Three forms are understood: MSD / nnU-Net v1 ``{"0": "background", "1": "edema", ...}``,
    nnU-Net v2 ``{"background": 0, "edema": 1, ...}``, and nnU-Net v2 region-based
    ``{"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}``
    (used with ``regions_class_order``): a value in WT only is edema, in TC but not ET necrosis,
    in ET enhancing tumour.
    """
    pairs = _label_pairs(labels, path)
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


# --------------------------------------------------------------------------------------------
# writing dataset.json


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` itself (POSIX); a no-op where ``fcntl`` is
    missing. Locking the folder rather than a lock file leaves nothing behind."""
    if fcntl is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def cases_in(folder: Path, ending: str) -> list[str]:
    """Sorted names (without ``ending``) of the visible files of ``folder`` that end in it."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name[: -len(ending)]
        for p in folder.iterdir()
        if p.name.endswith(ending) and not p.name.startswith(".")
    )


def rebuild_dataset_json(
    root: Path, ending: str, fill: Callable[[dict[str, Any], Path, str], None]
) -> Path:
    """Rebuild ``root/dataset.json`` under a lock: ``fill(data, root, ending)`` sets the fields
    derived from the files on the existing contents (other fields, such as ``name`` or
    ``description``, are kept)."""
    path = root / "dataset.json"
    with _locked(root):
        data: dict[str, Any] = {}
        if path.is_file():
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text(encoding="utf-8-sig"))
        fill(data, root, ending)
        write_json_atomic(data, path)
    return path


def training_paths(
    case_id: str, root: Path, labelled: bool, ending: str, image_stems: Sequence[str]
) -> list[Path]:
    """The files of one case: its images (in ``imagesTr/``, or ``imagesTs/`` without a label
    map), its label map ``labelsTr/<case_id><ending>`` and ``dataset.json``, in that order."""
    images = root / ("imagesTr" if labelled else "imagesTs")
    paths = [images / f"{name}{ending}" for name in image_stems]
    if labelled:
        paths.append(root / "labelsTr" / f"{case_id}{ending}")
    return [*paths, root / "dataset.json"]


def write_training_case(
    case: Case,
    root: Path,
    ending: str,
    images: Sequence[np.ndarray],
    *,
    convention: str,
    case_paths: CasePaths,
    update_index: UpdateIndex,
) -> Path:
    """Write ``images`` (file order) and the label map of ``case`` (in ``convention``) to the
    paths ``case_paths`` gives, then rebuild ``dataset.json`` with ``update_index``.

    Returns:
        ``root``.
    """
    seg = label_on_disk(case, convention)
    paths = case_paths(case.case_id, root, seg is not None, ending)
    for image, path in zip(images, paths):
        save_image(image, case, path)
    if seg is not None:
        save_label(seg, case, paths[len(images)])
    update_index(root, ending)
    return root
