"""The Medical Segmentation Decathlon layout (Task01 BrainTumour).

``imagesTr/<case>.nii.gz``: one 4D image ``(X, Y, Z, 4)`` per case, channels in the order
``dataset.json``'s ``modality`` entry gives (Task01: FLAIR, T1w, T1gd, T2w);
``labelsTr/<case>.nii.gz`` (Task01: 1 edema, 2 non-enhancing, 3 enhancing); cases without a label
are written to ``imagesTs/``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.layouts.base import (
    CaseRef,
    Layout,
    nifti_files,
    stem,
)
from cascadeseg.data.layouts.dataset_json import (
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

#: Channel names written to ``dataset.json``, by channel index.
MSD_CHANNELS: tuple[tuple[str, str], ...] = (
    ("flair", "FLAIR"),
    ("t1", "T1w"),
    ("t1ce", "t1gd"),
    ("t2", "T2w"),
)


def _detect(root: Path) -> int:
    """2 (a marker, beats file names) for ``imagesTr/`` of 4D images, else 0."""
    images = training_images(root)
    return 0 if images is None or named_like_nnunet(images) else 2


def _discover(root: Path, convention: str | None) -> list[CaseRef]:
    data, json_path = read_dataset_json(root)
    channels = channels_from_dataset_json(data, json_path)
    convention = convention or convention_from_dataset_json(data, json_path, ("msd",))
    refs = []
    for image in nifti_files(root / "imagesTr"):
        case_id = stem(image)
        files = {"image": image}
        seg = label_file(root / "labelsTr", case_id, (".nii.gz", ".nii"))
        if seg is not None:
            files["seg"] = seg
        extra = {"channels": dict(channels), "dataset_json": json_path}
        refs.append(CaseRef(case_id, files, "msd", convention, extra))
    return refs


def _case_paths(case_id: str, root: Path, labelled: bool, ending: str) -> list[Path]:
    return training_paths(case_id, root, labelled, ending, [case_id])


def _write(case: Case, root: Path, ending: str) -> Path:
    order = [MODALITIES.index(m) for m, _ in MSD_CHANNELS]
    image = np.stack([case.image[c] for c in order], axis=-1)
    return write_training_case(
        case,
        root,
        ending,
        [image],
        convention=MSD.label_convention,
        case_paths=_case_paths,
        update_index=_update_index,
    )


def _fill(data: dict[str, Any], root: Path, ending: str) -> None:
    labelled = set(cases_in(root / "labelsTr", ending))
    train = [c for c in cases_in(root / "imagesTr", ending) if c in labelled]
    test = cases_in(root / "imagesTs", ending)
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
        {"image": f"./imagesTr/{c}{ending}", "label": f"./labelsTr/{c}{ending}"} for c in train
    ]
    data["test"] = [f"./imagesTs/{c}{ending}" for c in test]


_update_index = partial(rebuild_dataset_json, fill=_fill)


MSD = Layout(
    name="msd",
    title="MSD (imagesTr/ 4D)",
    description="Medical Segmentation Decathlon Task01: imagesTr/ 4D, labelsTr/, dataset.json",
    label_convention="msd",
    detect=_detect,
    discover=_discover,
    looks_for="imagesTr/ or dataset.json",
    case_paths=_case_paths,
    write=_write,
    update_index=_update_index,
)
