"""Missing sequences in the data layer: dropout draws, fills, availability channels, readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cascadeseg.config import Config, apply_overrides
from cascadeseg.data.case import MODALITIES
from cascadeseg.data.datasets import CropDataset3D, SliceDataset2D, item_rng
from cascadeseg.data.layouts import discover_cases, read_case, read_files
from cascadeseg.data.missing import (
    SequenceDropout,
    dropped_subsets,
    missing_fill_of_recipe,
    parse_sequences,
    present_flags,
    substitute_missing,
    with_availability,
    without_sequences,
)
from cascadeseg.data.preprocess import preprocess_case
from cascadeseg.data.writers import write_case
from cascadeseg.errors import ConfigError, InputError
from toy import make_tiny_case


def test_dropped_subsets_are_every_non_empty_proper_subset() -> None:
    subsets = dropped_subsets(3)
    assert len(subsets) == 14 and len(set(subsets)) == 14
    assert all(1 <= len(s) <= 3 for s in subsets)
    assert [len(s) for s in dropped_subsets(1)] == [1, 1, 1, 1]
    with pytest.raises(ValueError):
        dropped_subsets(4)


def test_dropout_rate_subsets_and_never_all_four() -> None:
    dropout = SequenceDropout(0.3, 3, "mask")
    draws = [dropout.draw(item_rng(0, 0, i)) for i in range(4000)]
    dropped = [d for d in draws if d]
    assert abs(len(dropped) / len(draws) - 0.3) < 0.03
    assert all(0 < len(d) < 4 for d in dropped)
    counts = {s: dropped.count(s) for s in dropped_subsets(3)}
    assert min(counts.values()) > 0.5 * len(dropped) / 14  # every subset, about uniformly
    capped = [SequenceDropout(1.0, 1).draw(item_rng(1, 0, i)) for i in range(200)]
    assert {len(d) for d in capped} == {1}


def test_dropout_draws_are_a_function_of_seed_epoch_index() -> None:
    dropout = SequenceDropout(0.5, 3)
    first = [dropout.draw(item_rng(7, 2, i)) for i in range(50)]
    assert first == [dropout.draw(item_rng(7, 2, i)) for i in range(50)]
    assert first != [dropout.draw(item_rng(7, 3, i)) for i in range(50)]
    rng = item_rng(0, 0, 0)
    SequenceDropout(0.0).draw(rng)  # p = 0 draws nothing from the generator
    assert rng.random() == item_rng(0, 0, 0).random()


def test_apply_zero_fills_and_appends_constant_availability_channels() -> None:
    image = np.ones((4, 3, 3, 2), np.float32)
    out = SequenceDropout(1.0, fill="mask").apply(image, (2,))
    assert out.shape == (8, 3, 3, 2)
    assert not out[2].any() and out[[0, 1, 3]].all()
    assert [float(np.unique(out[4 + c])[0]) for c in range(4)] == [1.0, 1.0, 0.0, 1.0]
    zero = SequenceDropout(1.0, fill="zero").apply(image, (0, 3))
    assert zero.shape == (4, 3, 3, 2) and not zero[[0, 3]].any() and zero[[1, 2]].all()
    # A 2.5D stack (offset * 4 + sequence): the sequence goes in every context slice.
    stack = SequenceDropout(1.0, fill="zero").apply(np.ones((12, 2, 2), np.float32), (1,))
    assert [bool(stack[c].any()) for c in range(12)] == [c % 4 != 1 for c in range(12)]


def test_with_availability_on_network_inputs() -> None:
    x = torch.zeros(2, 4, 3, 5)
    out = with_availability(x, present_flags(["t1"]))
    assert out.shape == (2, 8, 3, 5)
    assert torch.equal(out[:, 4:].amax(dim=(2, 3)), torch.tensor([[1.0, 0, 1, 1]] * 2))
    assert torch.equal(out[:, 4:].amin(dim=(2, 3)), out[:, 4:].amax(dim=(2, 3)))


def test_parse_sequences() -> None:
    assert parse_sequences(["t1ce,flair"]) == ("flair", "t1ce")
    assert parse_sequences(["T2", "t2"]) == ("t2",)
    with pytest.raises(ConfigError, match="unknown sequence 't1c'"):
        parse_sequences(["t1c"])
    with pytest.raises(ConfigError, match="at least one must stay"):
        parse_sequences(list(MODALITIES))


def test_recipe_fill_needs_sequence_dropout() -> None:
    assert missing_fill_of_recipe({"data": {"missing_fill": "mask"}}) is None
    assert missing_fill_of_recipe({"data": {"sequence_dropout": 0.5}}) == "mask"
    assert missing_fill_of_recipe({"data": {"sequence_dropout": 0.5, "missing_fill": "zero"}}) == (
        "zero"
    )
    assert missing_fill_of_recipe({}) is None
    with pytest.raises(ConfigError, match=r"data\.sequence_dropout_max must be 1, 2 or 3"):
        apply_overrides(Config(), ["data.sequence_dropout_max=4"])
    with pytest.raises(ConfigError, match=r"data\.missing_fill must be one of mask, zero"):
        apply_overrides(Config(), ["data.missing_fill=noise"])


def test_datasets_drop_sequences_per_item() -> None:
    pre = preprocess_case(make_tiny_case((24, 24, 16)))
    dropout = SequenceDropout(1.0, 3, "mask")
    crops = CropDataset3D([pre], patch_size=(8, 8, 8), seed=3, sequence_dropout=dropout)
    item = crops[(0, 0)]
    assert item["image"].shape == (8, 8, 8, 8)
    present = item["image"][4:, 0, 0, 0]
    assert 0 < float(present.sum()) < 4
    assert torch.equal(crops[(0, 0)]["image"], item["image"])  # reproducible
    plain = CropDataset3D([pre], patch_size=(8, 8, 8), seed=3)
    kept = present.bool()
    assert torch.equal(item["image"][:4][kept], plain[(0, 0)]["image"][kept])  # same crop
    slices = SliceDataset2D(
        [pre], slice_size=(16, 16), slice_context=1, seed=0, sequence_dropout=dropout
    )
    assert slices.in_channels == 16 and slices[(0, 0)]["image"].shape == (16, 16, 16)


def test_keys_flagged_off_drop_nothing_but_keep_the_mask_channels() -> None:
    """``(epoch, index, 0)``: sequence dropout not started (``data.sequence_dropout_start``)."""
    pre = preprocess_case(make_tiny_case((24, 24, 16)))
    dropout = SequenceDropout(1.0, 3, "mask")
    crops = CropDataset3D([pre], patch_size=(8, 8, 8), seed=3, sequence_dropout=dropout)
    plain = CropDataset3D([pre], patch_size=(8, 8, 8), seed=3)
    for index in range(3):
        held = crops[(1, index, 0)]["image"]
        assert torch.equal(held[:4], plain[(1, index)]["image"])  # the same crop, all four
        assert torch.equal(held[4:], torch.ones_like(held[4:]))  # every sequence present
        assert float(crops[(1, index, 1)]["image"][4:, 0, 0, 0].sum()) < 4  # flag on: dropped
    slices = SliceDataset2D([pre], slice_size=(16, 16), seed=0, sequence_dropout=dropout)
    plain_slices = SliceDataset2D([pre], slice_size=(16, 16), seed=0)
    held = slices[(0, 2, 0)]["image"]
    assert torch.equal(held[:4], plain_slices[(0, 2)]["image"])
    assert torch.equal(held[4:], torch.ones_like(held[4:]))


def test_dropout_window_needs_dropout_and_start_below_end() -> None:
    with pytest.raises(ConfigError, match=r"data\.sequence_dropout_start=0\.5 needs sequence"):
        apply_overrides(Config(), ["data.sequence_dropout_start=0.5"])
    with pytest.raises(ConfigError, match=r"data\.sequence_dropout_start must be a number in"):
        apply_overrides(Config(), ["data.sequence_dropout=0.5", "data.sequence_dropout_start=1"])
    with pytest.raises(ConfigError, match=r"data\.sequence_dropout_end=0\.5 needs sequence"):
        apply_overrides(Config(), ["data.sequence_dropout_end=0.5"])
    window = ["data.sequence_dropout=0.5", "data.sequence_dropout_start=0.5"]
    with pytest.raises(ConfigError, match=r"=0\.5 must be below data\.sequence_dropout_end=0\.5"):
        apply_overrides(Config(), [*window, "data.sequence_dropout_end=0.5"])
    cfg = apply_overrides(Config(), [*window, "data.sequence_dropout_end=0.9"])
    assert (cfg.data.sequence_dropout_start, cfg.data.sequence_dropout_end) == (0.5, 0.9)


def _write_without(tmp_path: Path, modality: str) -> Path:
    data = tmp_path / "data"
    case = make_tiny_case((16, 16, 12), case_id="BraTS2021_00000")
    write_case(case, data, "brats2021")
    (data / case.case_id / f"{case.case_id}_{modality}.nii.gz").unlink()
    return data


def test_readers_allow_a_missing_file_only_when_asked(tmp_path: Path) -> None:
    data = _write_without(tmp_path, "t1ce")
    (ref,) = discover_cases(data)
    assert ref.extra["missing"] == ("t1ce",)
    with pytest.raises(InputError, match="missing t1ce file"):
        read_case(ref)
    case = read_case(ref, allow_missing=True)
    assert case.missing == ("t1ce",)
    assert not case.image[2].any()
    assert all(case.image[c].any() for c in (0, 1, 3))
    assert preprocess_case(case).image[2].max() == 0  # the fill survives preprocessing


def test_read_files_without_flair(tmp_path: Path) -> None:
    data = _write_without(tmp_path, "flair")
    folder = data / "BraTS2021_00000"
    files = {m: folder / f"BraTS2021_00000_{m}.nii.gz" for m in ("t1", "t1ce", "t2")}
    with pytest.raises(InputError, match="no flair file given"):
        read_files(flair=None, **files)
    case = read_files(flair=None, **files, allow_missing=True)
    assert case.case_id == "BraTS2021_00000" and case.missing == ("flair",)
    assert case.meta.label_convention == "brats2021"


def test_without_sequences_records_and_zero_fills() -> None:
    case = make_tiny_case((16, 16, 12))
    gone = without_sequences(case, ["t2", "flair"])
    assert gone.missing == ("flair", "t2")
    assert not gone.image[[0, 3]].any() and gone.image[1].any()
    assert case.image[0].any()  # the original is untouched
    assert without_sequences(case, []) is case


def test_nnunet_case_without_a_channel_file(tmp_path: Path) -> None:
    case = make_tiny_case((16, 16, 12), case_id="BRATS_001")
    write_case(case, tmp_path, "nnunet")
    (tmp_path / "imagesTr" / "BRATS_001_0003.nii.gz").unlink()  # FLAIR in nnU-Net's order
    (ref,) = discover_cases(tmp_path)
    assert ref.extra["missing"] == ("flair",)
    with pytest.raises(InputError, match="is missing flair"):
        read_case(ref)
    read = read_case(ref, allow_missing=True)
    assert read.missing == ("flair",) and not read.image[0].any()
    np.testing.assert_array_equal(read.image[1:], case.image[1:])


def _channels(n: int = 4) -> np.ndarray:
    """``(n, 2, 2)``: channel ``c`` filled with ``c + 1`` (which channel a copy came from)."""
    return np.stack([np.full((2, 2), c + 1.0, np.float32) for c in range(n)])


def test_substitute_missing_by_the_nearest_sibling() -> None:
    image = _channels()
    out, substituted = substitute_missing(image, ["t1ce"], "sibling")
    assert substituted == {"t1ce": "t1"}
    assert [float(out[c, 0, 0]) for c in range(4)] == [1.0, 2.0, 2.0, 4.0]
    assert float(image[2, 0, 0]) == 3.0  # the input is untouched
    out, substituted = substitute_missing(image, ["flair", "t1"], "sibling")
    assert substituted == {"flair": "t2", "t1": "t1ce"}
    assert [float(out[c, 0, 0]) for c in range(4)] == [4.0, 3.0, 3.0, 4.0]
    # Both siblings missing: the preference order after the sibling.
    t1_pair = substitute_missing(image, ["t1", "t1ce"], "sibling")[1]
    assert t1_pair == {"t1": "flair", "t1ce": "flair"}
    t2_pair = substitute_missing(image, ["flair", "t2"], "sibling")[1]
    assert t2_pair == {"flair": "t1ce", "t2": "t1ce"}
    only_t1 = substitute_missing(image, ["flair", "t1ce", "t2"], "sibling")[1]
    assert only_t1 == {"flair": "t1", "t1ce": "t1", "t2": "t1"}
    # A 2.5D stack (offset * 4 + sequence): the same slice offset's sibling.
    stack, _ = substitute_missing(_channels(12), ["t2"], "sibling")
    assert [float(stack[c, 0, 0]) for c in (3, 7, 11)] == [1.0, 5.0, 9.0]


def test_substitute_missing_by_zeros() -> None:
    out, substituted = substitute_missing(_channels(), ["t2", "flair"], "zero")
    assert substituted == {"flair": "zero", "t2": "zero"}
    assert not out[[0, 3]].any() and out[[1, 2]].all()
    image = _channels()
    assert substitute_missing(image, [], "sibling") == (image, {})
    with pytest.raises(ValueError, match="all four"):
        substitute_missing(image, MODALITIES, "zero")
    with pytest.raises(ValueError, match="how must be one of"):
        substitute_missing(image, ["t1"], "mean")
    with pytest.raises(ValueError, match="unknown sequence"):
        substitute_missing(image, ["t1c"], "zero")
