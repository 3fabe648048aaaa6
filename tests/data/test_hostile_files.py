"""Hostile and broken files are rejected from their headers, with bounded memory.

Each file is built in ``tmp_path`` by hand (a NIfTI header followed by a stream of zeros written
through zlib in chunks), so the tests themselves stay light: the "gzip bomb" is a few hundred KB on
disk however much its header describes.
"""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cascadeseg.cli import main
from cascadeseg.data.layouts import discover_cases, read_case
from cascadeseg.data.nifti import (
    DEFAULT_MAX_VOXELS,
    MAX_VOXELS_ENV,
    load_nifti,
    read_header,
    save_nifti,
)
from cascadeseg.data.validate import check_affine, validate_case, warn_if_wrapped
from cascadeseg.data.writers import write_case
from cascadeseg.errors import InputError
from toy import make_tiny_case

#: Shape of the bomb's header: 125 M uint8 voxels (under the default cap, so that only the
#: comparison with the sibling files can stop it before decompression).
BOMB_SHAPE = (500, 500, 500)
MB = 2**20


def _header(shape, dtype=np.uint8, affine=None) -> bytes:
    """A single-file NIfTI-1 header (+ the 4 extension bytes) describing ``shape`` x ``dtype``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4) if affine is None else affine, code=1)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


def _gzip_zeros(path: Path, head: bytes, n_zeros: int) -> Path:
    """Write ``head`` followed by ``n_zeros`` zero bytes, gzip-compressed chunk by chunk."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(4 * MB)
    with open(path, "wb") as handle:
        handle.write(compressor.compress(head))
        left = n_zeros
        while left > 0:
            handle.write(compressor.compress(chunk[: min(left, len(chunk))]))
            left -= len(chunk)
        handle.write(compressor.flush())
    return path


def _peak_mb(function) -> float:
    """Peak traced allocation (MB, numpy arrays included) while ``function()`` runs."""
    tracemalloc.start()
    try:
        function()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / MB


def _rejected(function) -> tuple[str, float]:
    """The InputError message ``function()`` raises and the peak memory on the way (MB)."""
    messages: list[str] = []

    def run():
        with pytest.raises(InputError) as exc:
            function()
        messages.append(str(exc.value))

    peak = _peak_mb(run)
    assert "\n" not in messages[0]
    return messages[0], peak


@pytest.fixture(scope="module")
def bomb_case(tmp_path_factory) -> Path:
    """A BraTS case whose T1 is a gzip bomb: 125 MB of zeros (~0.1 MB on disk), consistent
    header, while the other files are 32x32x24."""
    root = tmp_path_factory.mktemp("bomb")
    folder = write_case(make_tiny_case(case_id="case_000"), root, "brats2021")
    t1 = folder / "case_000_t1.nii.gz"
    _gzip_zeros(t1, _header(BOMB_SHAPE), int(np.prod(BOMB_SHAPE)))
    assert t1.stat().st_size < 2 * MB
    return root


# ---------------------------------------------------------------------------------------------
# the header against the file


@pytest.mark.parametrize("compressed", [True, False])
def test_tiny_file_claiming_a_gigabyte_is_rejected_without_allocating(tmp_path, compressed):
    head = _header((500, 500, 500), np.float64)  # 1 GB of data, under the voxel cap
    if compressed:
        path = tmp_path / "liar.nii.gz"
        path.write_bytes(gzip.compress(head + bytes(32)))
        assert path.stat().st_size < 150
    else:
        path = tmp_path / "liar.nii"
        path.write_bytes(head + bytes(32))
    message, peak = _rejected(lambda: load_nifti(path))
    assert message.startswith(str(path))
    assert ("gzip file can hold" if compressed else "32 of 1000000000 data bytes") in message
    assert peak < 5


def test_header_beyond_the_voxel_cap_is_rejected_and_the_cap_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(_header((1024, 1024, 1024), np.int16) + bytes(32)))
    message, peak = _rejected(lambda: read_header(path))
    assert f"more than the cap of {DEFAULT_MAX_VOXELS}" in message and MAX_VOXELS_ENV in message
    assert peak < 5
    monkeypatch.setenv(MAX_VOXELS_ENV, str(2**31))
    with pytest.raises(InputError, match="gzip file can hold"):  # past the cap, the size check
        read_header(path)
    small = save_nifti(np.ones((16, 16, 16), np.int16), np.eye(4), None, tmp_path / "s.nii.gz")
    monkeypatch.setenv(MAX_VOXELS_ENV, "1000")
    with pytest.raises(InputError, match="4096 values, more than the cap of 1000"):
        read_header(small)
    monkeypatch.setenv(MAX_VOXELS_ENV, "many")
    with pytest.raises(InputError, match=MAX_VOXELS_ENV):
        read_header(small)


def test_stream_longer_than_its_header_is_stopped_early(tmp_path):
    # Header: 16^3 uint8 (4 KB); stream: 64 MB of zeros. Reading stops about 1 MB past the header.
    path = _gzip_zeros(tmp_path / "long.nii.gz", _header((16, 16, 16)), 64 * MB)
    message, peak = _rejected(lambda: load_nifti(path))
    assert "more data than its header describes" in message
    assert peak < 20


def test_header_only_reads_a_few_bytes(bomb_case):
    t1 = bomb_case / "case_000" / "case_000_t1.nii.gz"
    peak = _peak_mb(lambda: read_header(t1))
    assert read_header(t1).shape == BOMB_SHAPE
    assert peak < 2


# ---------------------------------------------------------------------------------------------
# the header against the case's other files


def test_gzip_bomb_is_rejected_at_shape_differs_before_decompression(bomb_case):
    ref = discover_cases(bomb_case)[0]
    message, peak = _rejected(lambda: read_case(ref))
    assert "case_000_t1.nii.gz: image shape (500, 500, 500) differs from (32, 32, 24)" in message
    assert peak < 20  # decompressing the bomb would take 125 MB


def test_gzip_bomb_as_the_reference_file_is_rejected_too(tmp_path):
    folder = write_case(make_tiny_case(case_id="case_000"), tmp_path, "brats2021")
    _gzip_zeros(folder / "case_000_flair.nii.gz", _header(BOMB_SHAPE), int(np.prod(BOMB_SHAPE)))
    message, peak = _rejected(lambda: read_case(discover_cases(tmp_path)[0]))
    assert "case_000_t1.nii.gz: image shape (32, 32, 24) differs from (500, 500, 500)" in message
    assert peak < 20


def test_sibling_comparison_comes_before_the_voxel_cap_and_size_checks(tmp_path):
    # A 1.5 GiB header (past the cap, and more than the small file can hold) on one modality:
    # "shape differs" names the odd file out; the same header on every file: the cap.
    folder = write_case(make_tiny_case(case_id="case_000"), tmp_path, "brats2021")
    huge = _header((1024, 1024, 768), np.int16)
    (folder / "case_000_t2.nii.gz").write_bytes(gzip.compress(huge + bytes(64)))
    message, _ = _rejected(lambda: read_case(discover_cases(tmp_path)[0]))
    assert "case_000_t2.nii.gz: image shape (1024, 1024, 768) differs from (32, 32, 24)" in message
    for path in folder.iterdir():
        path.write_bytes(gzip.compress(huge + bytes(64)))
    message, peak = _rejected(lambda: read_case(discover_cases(tmp_path)[0]))
    assert f"more than the cap of {DEFAULT_MAX_VOXELS}" in message
    assert peak < 5


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_gzip_bomb_peak_memory_of_a_whole_process(bomb_case):
    # The same rejection measured as the process's peak resident memory (imports included):
    # VmHWM of a fresh process (ru_maxrss would carry over the parent's peak through fork+exec).
    code = (
        "from cascadeseg.data.layouts import discover_cases, read_case\n"
        "from cascadeseg.errors import InputError\n"
        "try:\n"
        f"    read_case(discover_cases({str(bomb_case)!r})[0])\n"
        "except InputError as exc:\n"
        "    print('rejected:', exc)\n"
        "status = open('/proc/self/status').read().split('VmHWM:')[1].split()\n"
        "print(int(status[0]) // 1024)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("rejected:") and "differs" in lines[0], result.stderr
    assert int(lines[-1]) < 500  # MB; decompressing would add 125 MB, the old reader 2x that


def test_label_map_header_is_compared_before_any_data(tmp_path):
    folder = write_case(make_tiny_case(case_id="case_000"), tmp_path, "brats2021")
    seg = folder / "case_000_seg.nii.gz"
    _gzip_zeros(seg, _header(BOMB_SHAPE), int(np.prod(BOMB_SHAPE)))
    message, peak = _rejected(lambda: read_case(discover_cases(tmp_path)[0]))
    assert "case_000_seg.nii.gz: label map shape (500, 500, 500) differs" in message
    assert peak < 20


# ---------------------------------------------------------------------------------------------
# affines


def _with_sform(path: Path, affine: np.ndarray) -> None:
    """Rewrite ``path``'s header with ``affine`` as its sform (the data is unchanged)."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    header = image.header.copy()
    header.set_sform(affine, code=1)
    path.unlink()
    nib.save(nib.Nifti1Image(data, None, header), path)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda a: a.__setitem__((slice(None), 2), 0.0), "zero voxel spacing on axis 2"),
        (lambda a: a.__setitem__((0, 0), np.nan), "affine is not finite"),
        (lambda a: a.__setitem__((slice(None), 1), a[:, 0]), "not invertible"),
    ],
)
def test_broken_affines_are_reported_by_every_reader(tmp_path, change, reason):
    folder = write_case(make_tiny_case(case_id="case_000"), tmp_path, "brats2021")
    t1ce = folder / "case_000_t1ce.nii.gz"
    affine = nib.load(t1ce).affine.copy()
    change(affine)
    _with_sform(t1ce, affine)
    for reader in (read_header, load_nifti):
        with pytest.raises(InputError, match=reason):
            reader(t1ce)
    with pytest.raises(InputError) as exc:
        read_case(discover_cases(tmp_path)[0])
    assert str(exc.value).startswith(str(t1ce)) and reason in str(exc.value)
    assert "nan mm" not in str(exc.value)


def test_inspect_reports_a_zero_spacing_affine(tmp_path, capsys):
    for i in range(2):
        write_case(make_tiny_case(seed=i, case_id=f"case_{i:03d}"), tmp_path, "brats2021")
    flair = tmp_path / "case_001" / "case_001_flair.nii.gz"
    affine = nib.load(flair).affine.copy()
    affine[:, 0] = 0.0
    _with_sform(flair, affine)
    assert main(["inspect", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    bad = [line for line in out if "BAD" in line]
    assert len(bad) == 1 and str(flair) in bad[0] and "zero voxel spacing on axis 0" in bad[0]
    assert out[-1] == "2 case(s): 1 ok, 1 bad"


def test_check_affine_accepts_real_geometries_and_validate_case_uses_it():
    brats = np.diag([-1.0, -1.0, 1.0, 1.0])
    brats[:3, 3] = (0, 239, 0)
    check_affine(brats, "x.nii")
    oblique = np.eye(4)
    oblique[:3, :3] = [[0.9, 0.1, 0.0], [-0.1, 0.9, 0.0], [0.0, 0.0, 3.0]]
    check_affine(oblique, "x.nii")
    case = make_tiny_case()
    broken = case.meta.affine.copy()
    broken[:, 1] = 0.0
    from dataclasses import replace

    with pytest.raises(InputError, match="zero voxel spacing on axis 1"):
        validate_case(replace(case, meta=replace(case.meta, affine=broken)))


# ---------------------------------------------------------------------------------------------
# int16 wrap-around


def test_int16_wraparound_is_warned_naming_the_file(tmp_path, caplog):
    case = make_tiny_case(case_id="case_000")
    image = case.image.copy()
    t1 = np.rint(image[1] / image[1].max() * 40000)  # up to 40000, as some scanners' uint16
    image[1] = np.where(t1 > 32767, t1 - 65536, t1)  # the same read as int16: bright voxels wrap
    assert image[1].min() < -20000
    from dataclasses import replace

    folder = write_case(replace(case, image=image), tmp_path, "brats2021")
    with caplog.at_level(logging.WARNING, logger="cascadeseg.data"):
        read_case(discover_cases(tmp_path)[0])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith(str(folder / "case_000_t1.nii.gz"))
    assert "int16 wrap-around" in messages[0]


def test_inspect_prints_the_wraparound_warning_under_its_case(tmp_path, capsys):
    case = make_tiny_case(case_id="case_000")
    image = case.image.copy()
    image[3] = np.where(image[3] > 0, -32768 + np.rint(image[3]), 0)  # the T2 wrapped everywhere
    from dataclasses import replace

    folder = write_case(replace(case, image=image), tmp_path, "brats2021")
    assert main(["inspect", str(tmp_path)]) == 0  # a warning, not a failure
    out = capsys.readouterr().out.splitlines()
    row = out.index(next(line for line in out if line.startswith("case_000")))
    assert out[row].endswith("WARNING")
    assert out[row + 1].strip().startswith(f"{folder / 'case_000_t2.nii.gz'}: warning:")
    assert out[-1] == "1 case(s): 1 ok, 1 with warnings, 0 bad"


def test_wraparound_check_leaves_ordinary_images_alone(caplog):
    with caplog.at_level(logging.WARNING, logger="cascadeseg.data"):
        ordinary = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)
        ordinary[0, 0, :3] = (-5, -2, -1)  # interpolation undershoot: not wrap-around
        assert not warn_if_wrapped(ordinary, "a.nii")
        assert not warn_if_wrapped(np.full((4, 4), -30000.0, np.float32), "b.nii")  # float
        assert warn_if_wrapped(np.array([0, 100, -32768], np.int16), "c.nii")
        mass = np.full(1000, 500, np.int16)
        mass[:50] = -3000  # 5% strongly negative
        assert warn_if_wrapped(mass, "d.nii")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["c.nii", "d.nii"]
