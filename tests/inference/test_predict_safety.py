"""predict never destroys a user's file and never reports failure as success.

Checked before any inference: outputs that are inputs, two cases with one id, an output folder
that is a file, not writable or locked by another run. Then: skipped cases exit 1, missing maps
are added beside an existing segmentation, one-line errors.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny_members import tiny_checkpoint, tiny_member
from torch import nn

from cascadeseg import cli
from cascadeseg.data.layouts import discover_cases
from cascadeseg.data.writers import write_case
from cascadeseg.errors import ConfigError, InputError
from cascadeseg.fsutil import LOCK_NAME
from cascadeseg.inference.loading import LoadedModel
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.plan import case_id_of_files
from cascadeseg.inference.predictor import predict
from toy import make_tiny_case

QUIET = PredictOptions(progress=False, device="cpu", tta=False)


class VoxelNet(nn.Module):
    """Voxel-wise region probabilities from FLAIR and T1ce; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        wt = torch.sigmoid(4 * self.scale * (x[:, 0] - 0.8))
        et = torch.sigmoid(2 * self.scale * (x[:, 2] - 3.0))
        return torch.stack([wt, et, et], dim=1)


def member(source: str = "net-a") -> LoadedModel:
    return tiny_member(VoxelNet().eval(), source=source, name="voxel")


def calls(model: LoadedModel) -> int:
    assert isinstance(model.network, VoxelNet)
    return model.network.calls


def dataset(root: Path, layout: str = "brats2021", n: int = 2, first: int = 0) -> Path:
    for i in range(first, first + n):
        case_id = f"BraTS2021_{i:05d}" if layout == "brats2021" else f"BRATS_{i:03d}"
        write_case(make_tiny_case(seed=i, case_id=case_id), root, layout)
    return root


def four_files(folder: Path, names: list[str]) -> list[Path]:
    case = make_tiny_case()
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for channel, name in zip(case.image, names):
        nib.save(nib.Nifti1Image(channel, case.meta.affine), folder / name)
        files.append(folder / name)
    return files


# --------------------------------------------------------------------------------------------
# outputs that are inputs


def test_msd_labels_folder_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    data = dataset(tmp_path / "Task01", "msd")
    label = data / "labelsTr" / "BRATS_000.nii.gz"
    before = label.read_bytes()
    model = member()
    for overwrite in (False, True):
        options = replace(QUIET, overwrite=overwrite)
        with pytest.raises(InputError, match="input file") as err:
            predict([model], data, data / "labelsTr", options)
        assert "labelsTr" in str(err.value) and "\n" not in str(err.value)
    assert label.read_bytes() == before and calls(model) == 0
    assert not (data / "labelsTr" / LOCK_NAME).exists()


def test_output_through_a_link_to_the_inputs_is_refused(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", "nnunet", n=1)
    (tmp_path / "link").symlink_to(data / "labelsTr")
    with pytest.raises(InputError, match="input file"):
        predict([member()], data, tmp_path / "link", replace(QUIET, overwrite=True))
    # a hard link: another name, the same file
    out = tmp_path / "out"
    out.mkdir()
    os.link(data / "labelsTr" / "BRATS_000.nii.gz", out / "BRATS_000.nii.gz")
    with pytest.raises(InputError, match="input file"):
        predict([member()], data, out, replace(QUIET, overwrite=True))


def test_four_files_named_by_modality_need_a_case_id(tmp_path: Path) -> None:
    folder = tmp_path / "patient"
    files = four_files(folder, ["flair.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz"])
    flair = files[0].read_bytes()
    with pytest.raises(InputError, match="--case-id"):
        predict([member()], files, folder, replace(QUIET, overwrite=True))
    # a case id that names an input file is refused like any other collision
    with pytest.raises(InputError, match="input file"):
        predict([member()], files, folder, replace(QUIET, overwrite=True), case_id="flair")
    assert files[0].read_bytes() == flair
    results = predict([member()], files, folder, QUIET, case_id="P1")
    assert [(r.case_id, r.status) for r in results] == [("P1", "ok")]
    assert (folder / "P1.nii.gz").exists() and files[0].read_bytes() == flair


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["BraTS-GLI-00001-000-t2f", "-t1n", "-t1c", "-t2w"], "BraTS-GLI-00001-000"),
        (["P7_flair", "_t1", "_t1ce", "_t2"], "P7"),
        (["case_0000", "_0001", "_0002", "_0003"], "case"),
        (["sub-01_ses-1_FLAIR", "_T1w", "_T1Gd", "_T2w"], "sub-01_ses-1"),
        (["P7.flair", ".t1", ".t1ce", ".t2"], "P7"),
    ],
)
def test_case_id_of_four_files_is_their_common_prefix(names: list[str], expected: str) -> None:
    stems = [names[0]] + [names[0][: len(expected)] + n for n in names[1:]]
    assert case_id_of_files([Path(f"/d/{s}.nii.gz") for s in stems]) == expected


@pytest.mark.parametrize(
    "names",
    [
        ["flair", "t1", "t1ce", "t2"],
        ["t1_a", "t1_b", "t1_c", "t1_d"],  # the only common part is a modality name
        ["P7flair", "P7t1", "P7t1ce", "P7t2"],  # no separator: no whole common token
        ["a_flair", "b_t1", "c_t1ce", "d_t2"],
    ],
)
def test_four_files_without_a_case_name_ask_for_one(names: list[str]) -> None:
    with pytest.raises(InputError, match="--case-id"):
        case_id_of_files([Path(f"/d/{n}.nii.gz") for n in names])


def test_cli_four_files_case_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = four_files(tmp_path, ["flair.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz"])
    ckpt = _checkpoint(tmp_path / "m.pt")
    argv = ["predict", "--model", str(ckpt), "--input", *map(str, files), "--output", "."]
    argv += ["--no-tta", "--no-progress", "--device", "cpu"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert cli.main([*argv, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "--case-id" in err and len(err.strip().splitlines()) == 1
        assert cli.main([*argv, "--case-id", "P1"]) == 0
    finally:
        os.chdir(cwd)
    assert (tmp_path / "P1.nii.gz").exists()


def test_same_case_id_from_two_inputs_is_an_error(tmp_path: Path) -> None:
    first = dataset(tmp_path / "a", n=2)
    second = dataset(tmp_path / "b", n=2, first=1)  # BraTS2021_00001 in both
    model = member()
    with pytest.raises(InputError, match="BraTS2021_00001") as err:
        predict([model], [first, second], tmp_path / "out", QUIET)
    assert str(first) in str(err.value) and str(second) in str(err.value)
    assert calls(model) == 0 and not (tmp_path / "out").exists()


def test_two_cases_writing_one_file_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_case(make_tiny_case(case_id="x"), data, "brats2021")
    write_case(make_tiny_case(case_id="x_probabilities"), data, "brats2021")
    with pytest.raises(InputError, match="would both write"):
        predict([member()], data, tmp_path / "out", replace(QUIET, save_probabilities=True))


# --------------------------------------------------------------------------------------------
# the output folder


def test_output_folder_that_is_a_file_or_not_writable(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", n=1)
    model = member()
    afile = tmp_path / "out.nii.gz"
    afile.write_bytes(b"x")
    with pytest.raises(InputError, match="is a file") as err:
        predict([model], data, afile, QUIET)
    assert str(afile) in str(err.value)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    with mock.patch("cascadeseg.fsutil.os.access", return_value=False):
        with pytest.raises(InputError, match="not writable") as err:
            predict([model], data, read_only, QUIET)
    assert str(read_only) in str(err.value) and calls(model) == 0


def test_a_second_run_into_a_locked_folder_fails_before_inference(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", n=1)
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen(["sleep", "30"])
    try:
        holder = {"pid": other.pid, "host": socket.gethostname(), "started": "t", "command": "A"}
        (out / LOCK_NAME).write_text(json.dumps(holder))
        model = member()
        with pytest.raises(InputError, match=f"pid {other.pid}"):
            predict([model], data, out, QUIET)
        assert calls(model) == 0 and json.loads((out / LOCK_NAME).read_text()) == holder
    finally:
        other.kill()
        other.wait()
    lines: list[str] = []
    results = predict([member()], data, out, QUIET, echo=lines.append)  # the holder is gone
    assert results[0].status == "ok" and any("took over" in line for line in lines)
    assert not (out / LOCK_NAME).exists()


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", n=1)
    out = tmp_path / "out"
    out.mkdir()
    left = out / ".BraTS2021_00000.nii.gz.q1w2e3r4.tmp.nii.gz"
    left.write_bytes(b"")
    os.utime(left, (1e9, 1e9))
    lines: list[str] = []
    predict([member()], data, out, QUIET, echo=lines.append)
    assert not left.exists()
    assert any("removed 1 temporary file" in line for line in lines)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["BraTS2021_00000.json", "BraTS2021_00000.nii.gz"]


def test_write_error_is_one_line_naming_the_path(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", n=1)
    denied = PermissionError(13, "Permission denied", str(tmp_path / "out" / "x.nii.gz"))
    with mock.patch("cascadeseg.data.layouts.save_nifti", side_effect=denied):
        results = predict([member()], data, tmp_path / "out", QUIET)
    assert results[0].status == "failed"
    assert results[0].message == f"{tmp_path / 'out' / 'x.nii.gz'}: Permission denied"


# --------------------------------------------------------------------------------------------
# existing outputs


def test_missing_probabilities_are_added_beside_the_kept_segmentation(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", n=1)
    out = tmp_path / "out"
    predict([member()], data, out, QUIET)
    label = out / "BraTS2021_00000.nii.gz"
    label.write_bytes(label.read_bytes())  # same content, a new mtime we can check
    stamp = label.stat().st_mtime_ns
    with_maps = replace(QUIET, save_probabilities=True)
    lines: list[str] = []
    results = predict([member()], data, out, with_maps, echo=lines.append)
    assert results[0].status == "ok" and "kept" in results[0].message
    assert label.stat().st_mtime_ns == stamp
    probabilities = out / "BraTS2021_00000_probabilities.nii.gz"
    assert nib.load(probabilities).shape == (32, 32, 24, 3)
    record = json.loads((out / "BraTS2021_00000.json").read_text())
    assert record["outputs"]["probabilities"] == probabilities.name
    # a segmentation of other models is not completed with this model's maps
    probabilities.unlink()
    results = predict([member("net-b")], data, out, with_maps)
    assert results[0].status == "skipped" and "other models" in results[0].message
    assert not probabilities.exists()


def test_uncertainty_of_a_single_pass_is_a_usage_error(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", n=1)
    with pytest.raises(ConfigError, match="nothing to vary over"):
        predict([member()], data, tmp_path / "out", replace(QUIET, save_uncertainty=True))
    two = predict(
        [member(), member("net-b")], data, tmp_path / "out", replace(QUIET, save_uncertainty=True)
    )
    assert two[0].status == "ok"


def _checkpoint(path: Path) -> Path:
    return tiny_checkpoint(path)


def test_cli_skipped_cases_exit_1_and_are_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = dataset(tmp_path / "data", n=2)
    ckpt = _checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    argv = ["predict", "--model", str(ckpt), "--input", str(data), "--output", str(out)]
    argv += ["--no-tta", "--no-progress", "--device", "cpu"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    (out / "BraTS2021_00001.nii.gz").unlink()
    (out / "BraTS2021_00001.json").unlink()
    assert cli.main(argv) == 1
    text = capsys.readouterr().out
    assert "BraTS2021_00000  SKIPPED" in text and "1 skipped" in text
    assert cli.main([*argv, "--save-uncertainty"]) == 2
    assert "nothing to vary over" in capsys.readouterr().err


def test_predict_cache_reuses_preprocessing(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", n=1)
    cache = tmp_path / "cache"
    plain = predict([member()], data, tmp_path / "a", QUIET)
    cached = predict([member()], data, tmp_path / "b", replace(QUIET, cache_dir=str(cache)))
    assert plain[0].volumes_ml == cached[0].volumes_ml
    assert any(p.name.endswith(".mem") for p in cache.rglob("*"))
    a = np.asarray(nib.load(tmp_path / "a" / "BraTS2021_00000.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b" / "BraTS2021_00000.nii.gz").dataobj)
    assert np.array_equal(a, b)
    assert discover_cases(data)[0].case_id == "BraTS2021_00000"


def test_after_a_killed_run_the_next_takes_over_and_cleans_up(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", n=1)
    out = tmp_path / "out"
    # A run killed (SIGKILL) while it holds the lock and writes a file through atomic_path.
    script = (
        "import os, signal\n"
        "from cascadeseg.fsutil import atomic_path, output_lock\n"
        f"with output_lock({str(out)!r}, 'cascadeseg predict (killed)'):\n"
        f"    with atomic_path({str(out / 'BraTS2021_00000.nii.gz')!r}, suffix='.nii.gz') as t:\n"
        "        t.write_bytes(b'half')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", script], env=env, check=False).returncode < 0
    assert (out / LOCK_NAME).exists() and len(list(out.glob(".*.tmp*"))) == 1
    lines: list[str] = []
    results = predict([member()], data, out, QUIET, echo=lines.append)
    assert results[0].status == "ok"
    assert any("took over" in line and "(killed)" in line for line in lines)
    assert any("removed 1 temporary file" in line for line in lines)
    assert sorted(p.name for p in out.iterdir()) == [
        "BraTS2021_00000.json",
        "BraTS2021_00000.nii.gz",
    ]
