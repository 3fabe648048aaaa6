"""The nnU-Net raw layout (v2, or v1 ``dataset.json``).

``imagesTr/<case>_000{0..3}<file_ending>``: one 3D file per channel, the channel order named by
``dataset.json`` (``channel_names``, or v1's ``modality``); ``labelsTr/<case><file_ending>``
labelled as ``dataset.json``'s ``labels`` says. Written in the channel order of nnU-Net's own BraTS
conversion (T1, T1ce, T2, FLAIR) with labels 1 edema, 2 necrosis, 3 enhancing and a v2
``dataset.json`` with region-based labels and ``regions_class_order``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.layouts.base import (
    CaseRef,
    Layout,
    nifti_files,
    stem,
)
from cascadeseg.data.layouts.dataset_json import (
    NNUNET_CHANNEL,
    cases_in,
    channels_from_dataset_json,
    convention_from_dataset_json,
    label_file,
    named_like_nnunet,
    read_dataset_json,
    rebuild_dataset_json,
    training_images,
    training_paths,
    write_training_case,
)
from cascadeseg.data.nifti import strip_nifti_suffix

#: Channel names written to ``dataset.json``, by channel index.
NNUNET_CHANNELS: tuple[tuple[str, str], ...] = (
    ("t1", "T1"),
    ("t1ce", "T1ce"),
    ("t2", "T2"),
    ("flair", "FLAIR"),
)


def _detect(root: Path) -> int:
    """2 (a marker, beats file names) for ``imagesTr/`` of ``<case>_0000`` 3D files, else 0."""
    images = training_images(root)
    return 2 if images is not None and named_like_nnunet(images) else 0


def _group_channel_files(
    images: list[Path], ending: str
) -> tuple[dict[str, dict[int, list[Path]]], list[Path]]:
    """Channel files by case id and channel index, and the files not named ``<case>_NNNN``."""
    by_case: dict[str, dict[int, list[Path]]] = {}
    strays: list[Path] = []
    for image in images:
        if not image.name.endswith(ending):
            continue
        match = NNUNET_CHANNEL.match(image.name[: -len(ending)])
        if match is None:
            strays.append(image)
            continue
        by_case.setdefault(match["case"], {}).setdefault(int(match["channel"]), []).append(image)
    return by_case, strays


def _case_files(
    case_id: str, channel_files: dict[int, list[Path]], channels: dict[str, int], json_path: Path
) -> tuple[dict[str, Path], list[str]]:
    """The modality files of one case, and problems (unlisted channels, missing modalities)."""
    modality_of = {index: modality for modality, index in channels.items()}
    problems = []
    files: dict[str, Path] = {}
    for index, paths in sorted(channel_files.items()):
        if index not in modality_of:
            problems.append(
                f"{paths[0]}: channel {index:04d} is not listed in {json_path.name} "
                f"(which names 4 channels): the case has the wrong channel count"
            )
        else:
            files[modality_of[index]] = paths[0]
    return files, problems


def _discover(root: Path, convention: str | None) -> list[CaseRef]:
    data, json_path = read_dataset_json(root)
    channels = channels_from_dataset_json(data, json_path)
    convention = convention or convention_from_dataset_json(data, json_path, ("nnunet_brats",))
    ending = str(data.get("file_ending", ".nii.gz"))
    by_case, strays = _group_channel_files(nifti_files(root / "imagesTr"), ending)
    refs = []
    for case_id in sorted(by_case):
        files, problems = _case_files(case_id, by_case[case_id], channels, json_path)
        missing = [m for m in MODALITIES if m not in files]
        if missing:
            expected = ", ".join(f"{case_id}_{channels[m]:04d}{ending}" for m in missing)
            problems.insert(
                0,
                f"{root / 'imagesTr'}: case {case_id} is missing {', '.join(missing)} ({expected})",
            )
        seg = label_file(root / "labelsTr", case_id, (ending,))
        if seg is not None:
            files["seg"] = seg
        extra: dict[str, Any] = {"channels": dict(channels), "dataset_json": json_path}
        if missing:
            extra["missing"] = tuple(missing)
        if problems:
            extra["problems"] = tuple(problems)
        refs.append(CaseRef(case_id, files, "nnunet", convention, extra))
    for stray in strays:
        problem = f"{stray}: not named <case>_<4-digit channel>{ending} as nnU-Net requires"
        refs.append(CaseRef(stem(stray), {}, "nnunet", convention, {"problems": (problem,)}))
    return refs


def _case_paths(case_id: str, root: Path, labelled: bool, ending: str) -> list[Path]:
    stems = [f"{case_id}_{i:04d}" for i in range(len(NNUNET_CHANNELS))]
    return training_paths(case_id, root, labelled, ending, stems)


def _write(case: Case, root: Path, ending: str) -> Path:
    images = [case.image[MODALITIES.index(modality)] for modality, _ in NNUNET_CHANNELS]
    return write_training_case(
        case,
        root,
        ending,
        images,
        convention=NNUNET.label_convention,
        case_paths=_case_paths,
        update_index=_update_index,
    )


def _fill(data: dict[str, Any], root: Path, ending: str) -> None:
    stems = cases_in(root / "imagesTr", ending)
    train = sorted({strip_nifti_suffix(s)[:-5] for s in stems if s.endswith("_0000")})
    data["channel_names"] = {str(i): name for i, (_, name) in enumerate(NNUNET_CHANNELS)}
    # nnU-Net's own BraTS conversion (Dataset137_BraTS2021): region-based training on labels
    # 1 edema, 2 necrosis, 3 enhancing.
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


_update_index = partial(rebuild_dataset_json, fill=_fill)


NNUNET = Layout(
    name="nnunet",
    title="nnU-Net raw (imagesTr/<case>_0000)",
    description="nnU-Net raw: imagesTr/<case>_000{0..3}.nii.gz, labelsTr/, dataset.json",
    label_convention="nnunet_brats",
    detect=_detect,
    discover=_discover,
    looks_for="imagesTr/ or dataset.json",
    case_paths=_case_paths,
    write=_write,
    update_index=_update_index,
)
