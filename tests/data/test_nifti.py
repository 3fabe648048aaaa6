"""load_nifti / save_nifti: round trips, header fields, atomic writes, clear errors."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from cascadeseg.data.nifti import is_nifti, load_nifti, save_nifti, strip_nifti_suffix
from cascadeseg.data.synth_config import brats_affine
from cascadeseg.errors import InputError

AFFINE = brats_affine((8, 6, 4))


def _volume(dtype: type = np.int16) -> np.ndarray:
    return (np.arange(8 * 6 * 4).reshape(8, 6, 4) - 50).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii"])
def test_round_trip_keeps_values_dtype_and_affine(tmp_path, dtype, name):
    data = _volume(dtype) if dtype is not np.uint8 else _volume(np.int16).clip(0).astype(np.uint8)
    path = save_nifti(data, AFFINE, None, tmp_path / name)
    array, affine, header = load_nifti(path)
    assert array.dtype == dtype
    np.testing.assert_array_equal(array, data)
    np.testing.assert_array_equal(affine, AFFINE)
    # A fresh header gets both forms set to the affine (code 1) and mm units.
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    assert header.get_xyzt_units()[0] == "mm"
    # BraTS affine: x and y flipped, origin (0, Y-1, 0).
    assert affine[1, 3] == 5.0 and affine[0, 0] == -1.0


def test_float_dtype_converts_while_reading(tmp_path):
    path = save_nifti(_volume(), AFFINE, None, tmp_path / "a.nii.gz")
    array, _, _ = load_nifti(path, dtype=np.float32)
    assert array.dtype == np.float32
    assert array[0, 0, 0] == -50.0 and array[7, 5, 3] == 8 * 6 * 4 - 51


def test_header_fields_are_copied_and_caller_header_untouched(tmp_path):
    source = nib.Nifti1Image(_volume(), AFFINE)
    source.header["descrip"] = b"source scan"
    source.header.set_qform(AFFINE, code=2)
    source.header.set_sform(AFFINE, code=4)
    source.header.set_slope_inter(2.0, 10.0)
    header = source.header
    label = np.zeros((8, 6, 4), np.uint8)
    label[1, 2, 3] = 4
    path = save_nifti(label, AFFINE, header, tmp_path / "seg.nii.gz")
    array, affine, written = load_nifti(path)
    assert array.dtype == np.uint8 and array[1, 2, 3] == 4 and array.sum() == 4
    assert written["descrip"] == b"source scan"
    assert int(written["qform_code"]) == 2 and int(written["sform_code"]) == 4
    np.testing.assert_array_equal(affine, AFFINE)
    # The source's scaling is not applied to the label values ...
    assert written.get_slope_inter() == (None, None)
    # ... and the caller's header keeps its own fields.
    assert header.get_data_dtype() == np.int16
    assert header.get_slope_inter() == (2.0, 10.0)


def test_save_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "a.nii.gz"
    save_nifti(_volume(), AFFINE, None, path)
    save_nifti(_volume() * 2, AFFINE, None, path)
    assert load_nifti(path)[0][7, 5, 3] == 2 * (8 * 6 * 4 - 51)
    with pytest.raises(Exception):  # noqa: B017 - nibabel cannot store object arrays
        save_nifti(np.empty((2, 2, 2), dtype=object), AFFINE, None, path)
    # The failed write left neither a temporary file nor a damaged destination.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]
    assert load_nifti(path)[0][7, 5, 3] == 2 * (8 * 6 * 4 - 51)


def test_save_creates_folders_and_rejects_other_endings(tmp_path):
    path = save_nifti(_volume(), AFFINE, None, tmp_path / "x" / "y" / "a.nii.gz")
    assert path.is_file()
    with pytest.raises(ValueError, match=r"\.nii"):
        save_nifti(_volume(), AFFINE, None, tmp_path / "a.npy")


def _assert_one_line(exc: pytest.ExceptionInfo[InputError], path) -> str:
    message = str(exc.value)
    assert message.startswith(str(path))
    assert "\n" not in message
    return message


@pytest.mark.parametrize("keep", [0.5, -8, -4, -1])
def test_truncated_gz_is_reported(tmp_path, keep):
    good = save_nifti(_volume(), AFFINE, None, tmp_path / "good.nii.gz")
    raw = good.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: int(len(raw) * keep)] if keep > 0 else raw[:keep])
    with pytest.raises(InputError) as exc:
        load_nifti(cut)
    assert "truncated" in _assert_one_line(exc, cut)


def test_corrupt_gz_is_reported(tmp_path):
    # Flip bytes inside the deflate stream of a compressible volume: the CRC no longer matches.
    data = np.zeros((32, 32, 16), np.int16)
    data[8:24, 8:24, 4:12] = 700
    good = save_nifti(data, AFFINE, None, tmp_path / "good.nii.gz")
    raw = bytearray(good.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4] = bytes(255 - b for b in raw[middle : middle + 4])
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(InputError) as exc:
        load_nifti(bad)
    message = _assert_one_line(exc, bad)
    assert "corrupt" in message or "truncated" in message


def test_truncated_uncompressed_nii_is_reported(tmp_path):
    good = save_nifti(_volume(), AFFINE, None, tmp_path / "good.nii")
    cut = tmp_path / "cut.nii"
    cut.write_bytes(good.read_bytes()[:400])
    with pytest.raises(InputError) as exc:
        load_nifti(cut)
    # 352-byte header + 8*6*4 int16 voxels; 48 of the 384 data bytes are present.
    assert "truncated (48 of 384 data bytes present)" in _assert_one_line(exc, cut)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "file is empty"),
        (b"hello world" * 50, "not a NIfTI image"),
        (gzip.compress(b"not an image at all" * 30), "not a NIfTI image"),
        (b"tiny", "not a NIfTI image"),
    ],
)
def test_non_nifti_files_are_reported(tmp_path, content, reason):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        load_nifti(path)
    assert reason in _assert_one_line(exc, path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_nifti(tmp_path / "nope.nii.gz")
    (tmp_path / "d.nii").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        load_nifti(tmp_path / "d.nii")


def test_uncompressed_file_named_gz_and_nifti2_are_read(tmp_path):
    plain = save_nifti(_volume(), AFFINE, None, tmp_path / "plain.nii")
    shutil.copy(plain, tmp_path / "plain.nii.gz")
    np.testing.assert_array_equal(load_nifti(tmp_path / "plain.nii.gz")[0], _volume())
    nib.save(nib.Nifti2Image(_volume(np.float32), AFFINE), tmp_path / "two.nii.gz")
    np.testing.assert_array_equal(load_nifti(tmp_path / "two.nii.gz")[0], _volume(np.float32))


def test_name_helpers():
    assert is_nifti("a/B.NII.GZ") and is_nifti("b.nii") and not is_nifti("c.nrrd")
    assert strip_nifti_suffix("x_flair.nii.gz") == "x_flair"
    assert strip_nifti_suffix("x.nii") == "x"
    assert strip_nifti_suffix("x.mha") == "x.mha"
