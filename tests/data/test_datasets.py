"""Training datasets: item contents, reproducibility across epochs and workers, slice dropping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascadeseg.data.datasets import CropDataset3D, SliceDataset2D
from cascadeseg.data.labels import label_to_regions
from cascadeseg.data.loaders import make_loader, set_loader_epoch
from cascadeseg.data.preprocess import Preprocessed, preprocess_case
from cascadeseg.errors import InputError
from toy import make_tiny_case


@pytest.fixture(scope="module")
def cases() -> list[Preprocessed]:
    return [
        preprocess_case(make_tiny_case((24, 24, 20), seed=i, case_id=f"c{i}", with_et=i != 2))
        for i in range(3)
    ]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_crop_item_contents(cases: list[Preprocessed]) -> None:
    ds = CropDataset3D(cases, patch_size=(16, 16, 12), foreground_prob=0.5, augment=True, seed=0)
    assert len(ds) == 3
    item = ds[1]
    assert item["image"].shape == (4, 16, 16, 12) and item["image"].dtype == torch.float32
    assert item["label"].shape == (16, 16, 12) and item["label"].dtype == torch.int64
    assert item["brain_mask"].dtype == torch.bool
    assert item["regions"].shape == (3, 16, 16, 12) and item["regions"].dtype == torch.float32
    np.testing.assert_array_equal(
        item["regions"].numpy(), label_to_regions(item["label"].numpy()).astype(np.float32)
    )
    assert not item["image"][:, ~item["brain_mask"]].any()  # background stays 0
    assert int(item["case_index"]) == 1


def test_soft_targets_follow_the_crop_and_its_flips() -> None:
    from cascadeseg.data.preprocess import PreprocessConfig

    cfg = PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), label_resampling="soft")
    case = preprocess_case(make_tiny_case((32, 32, 24), seed=5, case_id="soft"), cfg)
    assert case.region_fractions is not None
    ds = CropDataset3D([case], patch_size=(8, 8, 8), foreground_prob=1.0, augment=True, seed=2)
    for index in range(4):
        item = ds[index]
        regions = item["regions"].numpy()
        assert regions.dtype == np.float32 and 0 <= regions.min() and regions.max() <= 1
        assert (regions > 0).any() and ((regions > 0) & (regions < 1)).any()  # soft at edges
        hard = label_to_regions(item["label"].numpy())
        # the same crop and flips as the label map: more than half a voxel is in its regions
        assert hard[regions > 0.51].all() and not hard[regions < 0.49].any()


def test_crop_without_augmentation_matches_the_volume(cases: list[Preprocessed]) -> None:
    ds = CropDataset3D(cases, patch_size=(24, 24, 20), augment=False, seed=0)
    item = ds[0]  # the crop is the whole volume
    np.testing.assert_array_equal(item["image"].numpy(), cases[0].image)
    np.testing.assert_array_equal(item["label"].numpy(), cases[0].label)


def test_crop_pads_small_volumes(cases: list[Preprocessed]) -> None:
    ds = CropDataset3D(cases, patch_size=(32, 32, 32), augment=True, seed=0)
    item = ds[0]
    assert item["image"].shape == (4, 32, 32, 32)
    assert int(item["brain_mask"].sum()) == int(cases[0].brain_mask.sum())
    assert int((item["label"] > 0).sum()) == int((cases[0].label > 0).sum())


def test_foreground_probability_one_always_hits_tumour(cases: list[Preprocessed]) -> None:
    ds = CropDataset3D(
        cases, patch_size=(4, 4, 4), foreground_prob=1.0, augment=False, seed=5,
        samples_per_epoch=60,
    )  # fmt: skip
    assert len(ds) == 60
    assert all(bool((ds[i]["label"] > 0).any()) for i in range(60))


def test_region_sampling_in_crops(cases: list[Preprocessed]) -> None:
    """Crops centred by region hit the core more often than crops centred by voxel; a case
    without ET draws from its two regions only; an unknown mode is refused."""
    core_hits = {}
    for mode in ("voxel", "region"):
        ds = CropDataset3D(
            cases, patch_size=(2, 2, 2), foreground_prob=1.0, foreground_sampling=mode,
            augment=False, seed=2, samples_per_epoch=300,
        )  # fmt: skip
        items = [ds[i] for i in range(300)]
        assert all(bool((item["label"] > 0).any()) for item in items)
        core_hits[mode] = np.mean([bool(item["regions"][1].any()) for item in items])
    assert core_hits["region"] > core_hits["voxel"] + 0.1
    no_et = CropDataset3D([cases[2]], patch_size=(4, 4, 4), foreground_sampling="region")
    assert [len(r) > 0 for r in no_et._foreground_of(0)] == [True, True, False]
    with pytest.raises(ValueError, match="foreground_sampling"):
        CropDataset3D(cases, patch_size=(4, 4, 4), foreground_sampling="class")


def test_items_depend_on_seed_epoch_and_index_only(cases: list[Preprocessed]) -> None:
    ds = CropDataset3D(cases, patch_size=(12, 12, 12), foreground_prob=0.3, augment=True, seed=1)
    a = ds[(2, 1)]
    assert same(a, ds[(2, 1)])
    ds.set_epoch(2)
    assert same(a, ds[1])
    assert not same(a, ds[(3, 1)])  # another epoch draws another crop
    other = CropDataset3D(cases, patch_size=(12, 12, 12), foreground_prob=0.3, augment=True, seed=1)
    assert same(a, other[(2, 1)])  # a fresh dataset (a resumed run) draws the same
    # reading out of order changes nothing
    for i in reversed(range(3)):
        other[(0, i)]
    assert same(a, other[(2, 1)])


def test_loader_same_batches_for_any_worker_count(cases: list[Preprocessed]) -> None:
    def batches(workers: int) -> list[dict[str, torch.Tensor]]:
        ds = CropDataset3D(cases, patch_size=(8, 8, 8), augment=True, seed=3, samples_per_epoch=6)
        loader = make_loader(ds, batch_size=2, num_workers=workers, shuffle=True, seed=3)
        out = []
        for epoch in (0, 1):
            set_loader_epoch(loader, epoch)
            out.extend(loader)
        return out

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 6
    assert all(same(a, b) for a, b in zip(serial, parallel))
    assert not same(serial[0], serial[3])  # epochs differ (persistent workers follow the epoch)


def test_loader_order_depends_on_epoch(cases: list[Preprocessed]) -> None:
    ds = CropDataset3D(cases, patch_size=(8, 8, 8), augment=False, seed=0, samples_per_epoch=12)
    loader = make_loader(ds, batch_size=12, num_workers=0, shuffle=True, seed=0, epoch=4)
    first = next(iter(loader))["case_index"]
    assert sorted(first.tolist()) == sorted([0, 1, 2] * 4)
    again = make_loader(ds, batch_size=12, num_workers=0, shuffle=True, seed=0, epoch=4)
    assert torch.equal(next(iter(again))["case_index"], first)
    set_loader_epoch(again, 5)
    assert ds.epoch == 5


def test_slice_dataset_drops_a_fraction_of_empty_slices(cases: list[Preprocessed]) -> None:
    ds = SliceDataset2D(cases, slice_size=(24, 24), drop_empty=0.3, augment=False, seed=0)
    n_tumour, n_empty = len(ds.tumour_slices), len(ds.empty_slices)
    total_z = sum(c.shape[2] for c in cases)
    assert n_tumour > 0 and n_empty > 0 and n_tumour + n_empty <= total_z
    assert len(ds) == n_tumour + n_empty - round(0.3 * n_empty)
    kept = [{tuple(s) for s in ds.slices_for_epoch(e)} for e in range(4)]
    tumour = {tuple(s) for s in ds.tumour_slices}
    for epoch_slices in kept:
        assert tumour <= epoch_slices  # every tumour slice, every epoch
        assert len(epoch_slices) == len(ds)
    assert kept[0] != kept[1]  # the dropped empty slices are redrawn
    for i in range(len(ds)):  # items of epoch 0 are exactly its slice list
        case_index, z = ds.slices_for_epoch(0)[i]
        item = ds[(0, i)]
        np.testing.assert_array_equal(item["label"].numpy(), cases[case_index].label[..., z])
        np.testing.assert_array_equal(item["image"].numpy(), cases[case_index].image[..., z])


def test_slice_items_with_augmentation_and_context(cases: list[Preprocessed]) -> None:
    ds = SliceDataset2D(
        cases, slice_size=(20, 28), slice_context=1, drop_empty=0.0, augment=True, seed=2
    )
    assert ds.in_channels == 12
    item = ds[(0, 0)]
    assert item["image"].shape == (12, 20, 28) and item["label"].shape == (20, 28)
    assert item["regions"].shape == (3, 20, 28)
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3}
    assert same(item, ds[(0, 0)]) and not same(item, ds[(1, 0)])
    # context channels: the middle block is the slice itself
    plain = SliceDataset2D(
        cases, slice_size=(24, 24), slice_context=1, drop_empty=0.0, augment=False, seed=2
    )
    case_index, z = plain.slices_for_epoch(0)[3]
    image = plain[(0, 3)]["image"].numpy()
    np.testing.assert_array_equal(image[4:8], cases[case_index].image[..., z])
    np.testing.assert_array_equal(image[0:4], cases[case_index].image[..., z - 1])


def test_unlabelled_cases_are_rejected() -> None:
    pre = preprocess_case(make_tiny_case().with_label(None))
    with pytest.raises(InputError, match="label"):
        CropDataset3D([pre], patch_size=(8, 8, 8))
    with pytest.raises(InputError, match="label"):
        SliceDataset2D([pre], slice_size=(8, 8))


def test_bias_field_augmentation_in_crops(cases: list[Preprocessed]) -> None:
    plain = CropDataset3D(cases, patch_size=(12, 12, 12), foreground_prob=0.3, seed=4)
    off = CropDataset3D(
        cases, patch_size=(12, 12, 12), foreground_prob=0.3, seed=4, bias_field_prob=0.0
    )
    on = CropDataset3D(
        cases, patch_size=(12, 12, 12), foreground_prob=0.3, seed=4, bias_field_prob=1.0,
        bias_field_strength=(0.3, 0.3), bias_field_spacing_mm=10.0,
    )  # fmt: skip
    for i in range(3):
        a, b, c = plain[(0, i)], off[(0, i)], on[(0, i)]
        assert same(a, b)  # probability 0 draws nothing: the same crops as before
        # the same crop and labels, other intensities; the background stays 0
        for key in ("label", "regions", "brain_mask"):
            assert torch.equal(a[key], c[key])
        brain = c["brain_mask"]
        assert not torch.equal(a["image"], c["image"])
        assert not c["image"][:, ~brain].any()
        assert same(c, on[(0, i)])  # deterministic
    # the recorded mean/std of each channel is what the field acts on
    assert len(cases[0].extra["mean_over_std"]) == 4
    # T1 and T1ce under one field: the same crop, and their field (read back from the image)
    # the same wherever the brain is
    fixed = {"intensity_shift": 0.0, "intensity_scale": (1.0, 1.0), "flip_prob": 0.0}
    bare = CropDataset3D(cases, patch_size=(12, 12, 12), foreground_prob=1.0, seed=4, **fixed)
    shared = CropDataset3D(
        cases, patch_size=(12, 12, 12), foreground_prob=1.0, seed=4, bias_field_prob=1.0,
        bias_field_spacing_mm=10.0, bias_field_groups=[[1, 2]], **fixed,
    )  # fmt: skip
    for i in range(3):  # item i crops case i
        a, c = bare[(0, i)], shared[(0, i)]
        k = torch.tensor(cases[i].extra["mean_over_std"], dtype=torch.float32)[:, None, None, None]
        assert torch.equal(a["label"], c["label"])
        inside = c["brain_mask"] & ((a["image"] + k).abs() > 0.1).all(dim=0)
        ratio = ((c["image"] + k) / (a["image"] + k))[:, inside]  # exp(field) per channel
        torch.testing.assert_close(ratio[1], ratio[2], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(ratio[0], ratio[1], rtol=1e-3)


def test_bias_field_on_early_crops_only(cases: list[Preprocessed]) -> None:
    # keys (epoch, index, dropout flag, early flag): the field on the early crops alone
    def dataset(prob: float, early_only: bool) -> CropDataset3D:
        return CropDataset3D(
            cases, patch_size=(12, 12, 12), early_patch_size=(8, 8, 8), foreground_prob=0.3,
            seed=4, bias_field_prob=prob, bias_field_spacing_mm=10.0,
            bias_field_early_only=early_only,
        )  # fmt: skip

    plain, early_only, always = dataset(0.0, False), dataset(1.0, True), dataset(1.0, False)
    for i in range(3):
        late, early = (0, i, 1, 0), (0, i, 1, 1)
        assert same(early_only[late], plain[late])  # no field, nothing else drawn
        assert same(early_only[early], always[early])  # the field, as without the flag
        assert early_only[early]["image"].shape[1:] == (8, 8, 8)
        assert not torch.equal(early_only[early]["image"], plain[early]["image"])


def test_enhancement_erasure_in_crops(cases: list[Preprocessed]) -> None:
    fixed = {"intensity_shift": 0.0, "intensity_scale": (1.0, 1.0)}
    kwargs = {"patch_size": (12, 12, 12), "foreground_prob": 1.0, "seed": 4, **fixed}
    plain = CropDataset3D(cases, **kwargs)
    off = CropDataset3D(cases, enhancement_erase_prob=0.0, **kwargs)
    on = CropDataset3D(cases, enhancement_erase_prob=1.0, **kwargs)
    erased = 0
    for i in range(3):  # item i crops case i; case 2 has no enhancing tumour
        a, b, c = plain[(0, i)], off[(0, i)], on[(0, i)]
        assert same(a, b)  # probability 0 draws nothing: the same crops as before
        et = a["label"] == 3
        assert torch.equal(a["brain_mask"], c["brain_mask"])  # the same crop
        assert torch.equal(c["label"], torch.where(et, 1, a["label"]))
        assert torch.equal(c["regions"][:2], a["regions"][:2]) and not c["regions"][2].any()
        assert torch.equal(c["image"][[0, 1, 3]], a["image"][[0, 1, 3]])
        changed = (c["image"][2] != a["image"][2]).any().item()
        assert changed == bool(et.any())  # only T1ce, only in a crop with ET
        erased += int(changed)
        assert same(c, on[(0, i)])  # deterministic
    assert erased == 2


def test_compartment_contrast_in_crops(cases: list[Preprocessed]) -> None:
    # no shift or scale: their draws follow the contrast's, so they would differ everywhere
    fixed = {"intensity_shift": 0.0, "intensity_scale": (1.0, 1.0)}
    plain = CropDataset3D(cases, patch_size=(12, 12, 12), foreground_prob=1.0, seed=4, **fixed)
    on = CropDataset3D(
        cases, patch_size=(12, 12, 12), foreground_prob=1.0, seed=4,
        compartment_contrast_prob=1.0, compartment_contrast=0.3, **fixed,
    )  # fmt: skip
    for i in range(3):
        a, c = plain[(0, i)], on[(0, i)]
        for key in ("label", "regions", "brain_mask"):
            assert torch.equal(a[key], c[key])  # the same crop (drawn before the contrast)
        changed = ((a["image"] - c["image"]).abs() > 1e-5).any(dim=0)  # (z + k) - k: rounding
        tumour = a["label"] > 0
        assert changed[tumour].all()  # every tumour voxel's intensities change
        # ... and nothing far from it (the smoothed masks reach 4 sigma: 4 voxels)
        near = torch.nn.functional.max_pool3d(tumour[None, None].float(), 9, 1, 4)[0, 0] > 0
        assert not changed[~near].any()
        assert not c["image"][:, ~c["brain_mask"]].any()
        assert same(c, on[(0, i)])  # deterministic
    # with the bias field: the same field (drawn first), and the contrast on the tumour alone
    field = {"bias_field_prob": 1.0, "bias_field_spacing_mm": 10.0}
    bias = CropDataset3D(
        cases, patch_size=(12, 12, 12), foreground_prob=1.0, seed=4, **fixed, **field
    )
    both = CropDataset3D(
        cases, patch_size=(12, 12, 12), foreground_prob=1.0, seed=4, **fixed, **field,
        compartment_contrast_prob=1.0, compartment_contrast=0.3,
    )  # fmt: skip
    for i in range(3):
        a, c = bias[(0, i)], both[(0, i)]
        changed = ((a["image"] - c["image"]).abs() > 1e-5).any(dim=0)
        tumour = a["label"] > 0
        near = torch.nn.functional.max_pool3d(tumour[None, None].float(), 9, 1, 4)[0, 0] > 0
        assert changed[tumour].all() and not changed[~near].any()
        assert not torch.equal(a["image"], plain[(0, i)]["image"])  # the field is there


def test_compartment_contrast_on_some_channels(cases: list[Preprocessed]) -> None:
    fixed = {"intensity_shift": 0.0, "intensity_scale": (1.0, 1.0)}
    plain = CropDataset3D(cases, patch_size=(12, 12, 12), foreground_prob=1.0, seed=4, **fixed)
    one = CropDataset3D(
        cases, patch_size=(12, 12, 12), foreground_prob=1.0, seed=4,
        compartment_contrast_prob=1.0, compartment_contrast=0.3,
        compartment_contrast_channels=1, **fixed,
    )  # fmt: skip
    for i in range(4):
        a, c = plain[(0, i)], one[(0, i)]
        assert torch.equal(a["label"], c["label"])
        tumour = a["label"] > 0
        moved = ((a["image"] - c["image"]).abs() > 1e-5)[:, tumour].any(dim=1)  # (C,)
        assert int(moved.sum()) == 1  # one sequence changed, the other three as they were


# ---------------------------------------------------------------------------------------------
# the patch size against the volumes and the memory


def test_patch_larger_than_every_volume_is_a_config_error() -> None:
    from cascadeseg.data.patch_check import check_patch_size
    from cascadeseg.errors import ConfigError

    shapes = [(120, 150, 118), (140, 172, 136)]
    check_patch_size((128, 128, 128), shapes, available_bytes=10**12)  # larger than one: padded
    with pytest.raises(ConfigError) as exc:
        check_patch_size((500, 500, 500), shapes, available_bytes=10**12)
    message = str(exc.value)
    assert message.startswith("data.patch_size=[500, 500, 500]: larger than every preprocessed")
    assert "axis 0 (500 > 140 voxels; volumes from 120x150x118 to 140x172x136)" in message
    with pytest.raises(ConfigError, match=r"axis 1 \(96 > 80 voxels"):
        check_patch_size((64, 96), [(70, 80, 60)], available_bytes=10**12)  # 2D slices
    with pytest.raises(ConfigError, match="at least 1 voxel"):
        check_patch_size((0, 16, 16), shapes)


def test_patch_that_cannot_fit_in_memory_is_a_config_error() -> None:
    from cascadeseg.data.patch_check import available_memory_bytes, check_patch_size
    from cascadeseg.errors import ConfigError

    shapes = [(600, 600, 600)]
    with pytest.raises(ConfigError) as exc:
        check_patch_size((500, 500, 500), shapes, batch_size=2, available_bytes=13 * 10**9)
    # 2 crops x 125e6 voxels x (4 x 4 image + 21 label/regions/mask + 64 network) = 25.25e9 bytes
    assert "a batch of 2 such crops needs at least 25.2 GB to train, 13.0 GB" in str(exc.value)
    check_patch_size((128, 128, 128), shapes, batch_size=2, available_bytes=13 * 10**9)
    assert (available_memory_bytes() or 1) > 0


def test_train_rejects_a_huge_patch_before_drawing_crops(tmp_path, monkeypatch) -> None:
    from cascadeseg.config import Config, apply_overrides
    from cascadeseg.data.writers import write_case
    from cascadeseg.errors import ConfigError
    from cascadeseg.training.trainer import train

    for i in range(3):
        write_case(make_tiny_case(seed=i, case_id=f"toy_{i:03d}"), tmp_path / "data", "brats2021")
    cfg = apply_overrides(
        Config(),
        ["model.name=unet3d", "data.patch_size=[500,500,500]", "data.num_workers=0",
         "data.folds=3", "train.tensorboard=false"],
    )  # fmt: skip

    def no_crops(*args, **kwargs):
        raise AssertionError("a crop was drawn")

    monkeypatch.setattr("cascadeseg.data.augment.crop", no_crops)
    with pytest.raises(ConfigError, match=r"data\.patch_size=\[500, 500, 500\]: larger than every"):
        train(cfg, tmp_path / "data", tmp_path / "run", progress=False)


def test_case_balance_lifts_the_rare_kind(cases: list[Preprocessed]) -> None:
    # Cases 0 and 1 have enhancing tumour, case 2 has none: with power 1 it gets half the crops.
    uniform = CropDataset3D(cases, patch_size=(16, 16, 12), augment=False, seed=0)
    balanced = CropDataset3D(
        cases, patch_size=(16, 16, 12), augment=False, seed=0, case_balance=1.0
    )
    assert uniform.case_weights is None
    assert balanced.kinds == ["enhancing", "enhancing", "non-enhancing"]
    picked = [int(balanced[(0, i)]["case_index"]) for i in range(600)]
    assert abs(picked.count(2) / 600 - 0.5) < 0.07
    assert [int(uniform[(0, i)]["case_index"]) for i in range(6)] == [0, 1, 2, 0, 1, 2]
