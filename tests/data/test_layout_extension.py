"""A new dataset layout needs one module and one register_layout call: here both are this file.

The layout: one folder per case, ``<root>/<case>/<modality>.nii.gz`` and
``<root>/<case>/label.nii.gz`` with BraTS 2017-2021 labels (ET = 4). Registered, it is detected,
discovered, read and written by the public functions like the built-in layouts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cascadeseg.data.case import MODALITIES, Case
from cascadeseg.data.labels import ET, from_internal
from cascadeseg.data.layouts import (
    LAYOUTS,
    CaseRef,
    Layout,
    detect_layout,
    discover_cases,
    read_case,
    register_layout,
    unregister_layout,
    write_label_map,
)
from cascadeseg.data.layouts.base import label_on_disk, save_image, save_label
from cascadeseg.data.nifti import load_nifti
from cascadeseg.data.writers import case_paths, write_case
from toy import make_tiny_case

NAME = "percase"
CONVENTION = "brats2021"


def _detect(root: Path) -> int:
    folders = [p for p in root.iterdir() if p.is_dir()]
    return int(any((folder / "flair.nii.gz").is_file() for folder in folders))


def _discover(root: Path, convention: str | None) -> list[CaseRef]:
    refs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = {key: folder / f"{key}.nii.gz" for key in MODALITIES}
        if (folder / "label.nii.gz").is_file():
            files["seg"] = folder / "label.nii.gz"
        refs.append(CaseRef(folder.name, files, NAME, convention or CONVENTION))
    return refs


def _case_paths(case_id: str, root: Path, labelled: bool, ending: str) -> list[Path]:
    keys = [*MODALITIES, "label"] if labelled else list(MODALITIES)
    return [root / case_id / f"{key}{ending}" for key in keys]


def _write(case: Case, root: Path, ending: str) -> Path:
    seg = label_on_disk(case, CONVENTION)
    paths = _case_paths(case.case_id, root, seg is not None, ending)
    for channel, path in enumerate(paths[: len(MODALITIES)]):
        save_image(case.image[channel], case, path)
    if seg is not None:
        save_label(seg, case, paths[-1])
    return root / case.case_id


PER_CASE = Layout(
    name=NAME,
    title="one folder per case",
    description="<case>/{flair,t1,t1ce,t2,label}.nii.gz",
    label_convention=CONVENTION,
    detect=_detect,
    discover=_discover,
    looks_for="case folders with flair.nii.gz",
    case_paths=_case_paths,
    write=_write,
)


@pytest.fixture
def per_case_layout() -> Iterator[Layout]:
    register_layout(PER_CASE)
    try:
        yield PER_CASE
    finally:
        unregister_layout(NAME)


def test_a_registered_layout_is_written_detected_read_and_predicted(
    per_case_layout: Layout, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    cases = [make_tiny_case(seed=i, case_id=f"case_{i}") for i in range(2)]
    for case in cases:
        assert write_case(case, root, NAME) == root / case.case_id
    folder = root / "case_0"
    assert sorted(p.name for p in folder.iterdir()) == [
        "flair.nii.gz",
        "label.nii.gz",
        "t1.nii.gz",
        "t1ce.nii.gz",
        "t2.nii.gz",
    ]
    assert case_paths("case_0", root, NAME) == _case_paths("case_0", root, True, ".nii.gz")
    stored = load_nifti(folder / "label.nii.gz")[0]
    assert set(stored[cases[0].label == ET].tolist()) == {4}  # the layout's convention on disk

    assert detect_layout(root) == NAME
    refs = discover_cases(root)
    assert [ref.case_id for ref in refs] == ["case_0", "case_1"]
    for ref, case in zip(refs, cases):
        got = read_case(ref)
        np.testing.assert_array_equal(got.image, case.image)
        np.testing.assert_array_equal(got.label, case.label)
        np.testing.assert_allclose(got.meta.affine, case.meta.affine)
        assert got.meta.source_layout == NAME and got.meta.label_convention == CONVENTION

    prediction = read_case(refs[1])
    written = write_label_map(prediction.label, prediction.meta, tmp_path / "pred")
    assert written == tmp_path / "pred" / "case_1.nii.gz"
    on_disk = load_nifti(written)[0]
    np.testing.assert_array_equal(on_disk, from_internal(cases[1].label, CONVENTION))


def test_registering_twice_fails_and_unregistering_forgets(tmp_path: Path) -> None:
    register_layout(PER_CASE)
    try:
        with pytest.raises(ValueError, match="registered already"):
            register_layout(PER_CASE)
    finally:
        unregister_layout(NAME)
    assert NAME not in LAYOUTS
    with pytest.raises(ValueError, match=f"cannot write layout '{NAME}'"):
        write_case(make_tiny_case(), tmp_path, NAME)
