"""Augmentations checked by hand on tiny arrays; draws checked for their ranges and rates."""

from __future__ import annotations

import numpy as np
import pytest

from cascadeseg.data import augment


def test_shift_scale_by_hand() -> None:
    image = np.ones((2, 2, 2), dtype=np.float32)
    image[1] = 2.0
    mask = np.array([[True, False], [True, True]])
    out = augment.shift_scale_intensity(
        image, np.array([0.1, -0.1]), np.array([2.0, 0.5]), brain_mask=mask
    )
    np.testing.assert_allclose(out[0][mask], (1.0 + 0.1) * 2.0)
    np.testing.assert_allclose(out[1][mask], (2.0 - 0.1) * 0.5)
    assert out[0, 0, 1] == 0.0 and out[1, 0, 1] == 0.0  # background stays 0
    assert out.dtype == np.float32
    # without a mask every voxel changes; std scales the shift
    everywhere = augment.shift_scale_intensity(image, np.array([0.1, 0.1]), np.ones(2), std=2.0)
    np.testing.assert_allclose(everywhere[0], 1.2)
    np.testing.assert_allclose(image[0], 1.0)  # input untouched


def test_draw_intensity_ranges() -> None:
    rng = np.random.default_rng(0)
    shifts, scales = augment.draw_intensity(rng, 1000)
    assert shifts.shape == scales.shape == (1000,)
    assert -0.1 <= shifts.min() < -0.09 and 0.09 < shifts.max() <= 0.1
    assert 0.9 <= scales.min() < 0.91 and 1.09 < scales.max() <= 1.1


def test_flip_by_hand() -> None:
    label = np.arange(6).reshape(2, 3)
    image = np.stack([label, 10 * label])
    np.testing.assert_array_equal(augment.flip(label, (1,), spatial_dims=2), [[2, 1, 0], [5, 4, 3]])
    flipped = augment.flip(image, (0, 1), spatial_dims=2)
    np.testing.assert_array_equal(flipped[1], [[50, 40, 30], [20, 10, 0]])
    assert augment.flip(label, (), spatial_dims=2) is label


def test_draw_flips_rate() -> None:
    rng = np.random.default_rng(1)
    counts = np.zeros(3)
    for _ in range(2000):
        for axis in augment.draw_flips(rng, 3):
            counts[axis] += 1
    np.testing.assert_allclose(counts / 2000, 0.5, atol=0.05)
    assert augment.draw_flips(rng, 3, p=0.0) == ()
    assert augment.draw_flips(rng, 3, p=1.0) == (0, 1, 2)


def test_rotate2d_by_hand() -> None:
    label = np.zeros((5, 5), dtype=np.uint8)
    label[2, 3] = 1  # one step along +W from the centre
    turned = augment.rotate2d(label, 90.0, order=0)
    # scipy rotates counter-clockwise in the (H, W) plane as displayed: +W goes to -H
    assert turned[1, 2] == 1 and turned.sum() == 1
    image = np.stack([label, 2 * label]).astype(np.float32)
    np.testing.assert_allclose(augment.rotate2d(image, 90.0, order=1)[1], 2.0 * turned)
    assert augment.rotate2d(label, 0.0, order=0) is label
    # order 0 never invents label values; the shape is kept
    labels = np.random.default_rng(0).integers(0, 4, size=(9, 7)).astype(np.uint8)
    out = augment.rotate2d(labels, 13.0, order=0)
    assert out.shape == labels.shape and set(np.unique(out)) <= {0, 1, 2, 3}


def test_draw_rotation_range() -> None:
    rng = np.random.default_rng(2)
    angles = [augment.draw_rotation(rng, 15.0) for _ in range(500)]
    assert -15.0 <= min(angles) < -14.0 and 14.0 < max(angles) <= 15.0


def test_crop_with_padding_by_hand() -> None:
    array = np.arange(9).reshape(3, 3)
    out = augment.crop(array, (-1, 1), (3, 3))
    np.testing.assert_array_equal(out, [[0, 0, 0], [1, 2, 0], [4, 5, 0]])
    image = np.stack([array, -array])
    np.testing.assert_array_equal(augment.crop(image, (1, 0), (2, 2))[1], [[-3, -4], [-6, -7]])
    assert not augment.crop(array, (5, 5), (2, 2)).any()  # entirely outside: all padding
    assert augment.crop(array, (0, 0), (3, 3)).flags.c_contiguous


def test_centre_crop_start() -> None:
    assert augment.centre_crop_start((10, 4), (6, 8)) == (2, -2)


def test_uniform_crop_starts_stay_valid() -> None:
    rng = np.random.default_rng(3)
    starts = np.array([augment.draw_crop_start(rng, (10, 6, 4), (4, 6, 8)) for _ in range(500)])
    assert starts[:, 0].min() == 0 and starts[:, 0].max() == 6  # inside, both ends reached
    assert (starts[:, 1] == 0).all()  # exact fit
    # volume smaller than the crop: the volume lands anywhere inside the padded crop
    assert starts[:, 2].min() == -4 and starts[:, 2].max() == 0


def test_crop_overhang_widens_the_starts_by_half_a_crop() -> None:
    rng = np.random.default_rng(4)
    starts = np.array(
        [augment.draw_crop_start(rng, (40, 16, 8), (16, 16, 16), overhang=0.5) for _ in range(2000)]
    )
    # 0.5 x 16 = 8 voxels past each border: starts -8..32 (crop centre 0..40), -8..8, -16..8
    assert (starts[:, 0].min(), starts[:, 0].max()) == (-8, 32)
    assert (starts[:, 1].min(), starts[:, 1].max()) == (-8, 8)
    assert (starts[:, 2].min(), starts[:, 2].max()) == (-16, 8)


@pytest.mark.parametrize(("overhang", "border_over_centre"), [(0.0, 1 / 16), (0.5, 9 / 16)])
def test_crop_overhang_brings_the_border_into_crops(
    overhang: float, border_over_centre: float
) -> None:
    # 1D volume of 40 voxels, crops of 16. Without overhang voxel 0 is in 1 of the 25 possible
    # crops and voxel 20 in 16; with overhang 0.5 (starts -8..32, 41 of them) in 9 and 16.
    rng = np.random.default_rng(5)
    starts = np.array(
        [augment.draw_crop_start(rng, (40,), (16,), overhang=overhang)[0] for _ in range(20000)]
    )
    border = np.mean((starts <= 0) & (starts + 16 > 0))
    centre = np.mean((starts <= 20) & (starts + 16 > 20))
    assert border / centre == pytest.approx(border_over_centre, rel=0.15)


def test_crop_overhang_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="overhang"):
        augment.draw_crop_start(np.random.default_rng(0), (10,), (4,), overhang=0.6)


def test_foreground_crops_at_the_requested_rate() -> None:
    shape, size = (40, 40, 40), (10, 10, 10)
    label = np.zeros(shape, dtype=np.uint8)
    label[0:2, 0:2, 0:2] = 1  # a corner a uniform crop almost never reaches ((2/31)^3)
    foreground = augment.foreground_coordinates(label)
    assert foreground.shape == (8, 3)
    rng = np.random.default_rng(4)
    hits = []
    for _ in range(1000):
        start = augment.draw_crop_start(
            rng, shape, size, foreground=foreground, foreground_prob=0.5
        )
        hits.append(augment.crop(label, start, size).any())
    assert 0.45 < np.mean(hits) < 0.56  # 0.5 + 0.5 * 0.0003, 1000 draws: sd 0.016
    always = [
        augment.crop(
            label,
            augment.draw_crop_start(rng, shape, size, foreground=foreground, foreground_prob=1.0),
            size,
        ).any()
        for _ in range(100)
    ]
    assert all(always)


def _centre_label(label: np.ndarray, start: tuple[int, ...], size: tuple[int, ...]) -> int:
    return int(label[tuple(s + n // 2 for s, n in zip(start, size))])


def test_region_sampling_centres_small_cores_as_often_as_the_edema() -> None:
    """A core of 8 voxels in 1000 of edema: centred on it in about half the tumour-centred
    crops by region (two regions present: WT and TC), in under 1% by voxel."""
    shape, size = (40, 40, 40), (6, 6, 6)
    label = np.zeros(shape, dtype=np.uint8)
    label[10:20, 10:20, 10:20] = 2  # edema
    label[14:16, 14:16, 14:16] = 1  # a non-enhancing core, no ET
    regions = augment.region_coordinates(label)
    assert [len(r) for r in regions] == [1000, 8, 0]
    np.testing.assert_array_equal(regions[0], augment.foreground_coordinates(label))
    rates = {}
    for name, foreground in (("voxel", augment.foreground_coordinates(label)), ("region", regions)):
        rng = np.random.default_rng(3)
        starts = [
            augment.draw_crop_start(rng, shape, size, foreground=foreground, foreground_prob=1.0)
            for _ in range(2000)
        ]
        rates[name] = np.mean([_centre_label(label, s, size) == 1 for s in starts])
    assert rates["voxel"] < 0.02  # 8 / 1000
    assert 0.45 < rates["region"] < 0.55  # 1/2, 2000 draws: sd 0.011


def test_one_foreground_array_draws_as_a_list_of_it() -> None:
    """A list holding one array (voxel sampling in the datasets) draws the very crops the array
    itself does: the same random numbers, so runs of the voxel setting are unchanged."""
    label = np.zeros((30, 30, 30), dtype=np.uint8)
    label[5:12, 8:20, 3:9] = 2
    coords = augment.foreground_coordinates(label)
    empty = np.zeros((0, 3), dtype=np.int32)
    for foreground in ([coords], [coords, empty, empty]):
        a, b = np.random.default_rng(9), np.random.default_rng(9)
        for _ in range(50):
            assert augment.draw_crop_start(
                a, label.shape, (8, 8, 8), foreground=coords, foreground_prob=0.5
            ) == augment.draw_crop_start(
                b, label.shape, (8, 8, 8), foreground=foreground, foreground_prob=0.5
            )
    # no tumour at all: uniform crops, whatever the probability
    start = augment.draw_crop_start(
        np.random.default_rng(0), label.shape, (8, 8, 8), foreground=[empty] * 3,
        foreground_prob=1.0,
    )  # fmt: skip
    assert all(0 <= s <= 22 for s in start)


def test_foreground_coordinates_subsample() -> None:
    label = np.ones((30, 30, 30), dtype=np.uint8)
    coords = augment.foreground_coordinates(label, max_points=100, seed=0)
    assert coords.shape == (100, 3) and coords.dtype == np.int32
    assert len({tuple(c) for c in coords}) == 100
    np.testing.assert_array_equal(coords, augment.foreground_coordinates(label, max_points=100))


@pytest.mark.parametrize("size", [(4, 4), (8, 8)])
def test_draw_is_deterministic_for_a_seed(size: tuple[int, int]) -> None:
    a = augment.draw_crop_start(np.random.default_rng(7), (6, 6), size)
    b = augment.draw_crop_start(np.random.default_rng(7), (6, 6), size)
    assert a == b


def test_bias_field_by_hand() -> None:
    # z' = (z + k) * b - k: with b = 2 and k = 3, z = 0 -> 3 and z = -1 -> 1; outside the mask 0
    image = np.array([[[0.0, -1.0], [1.0, 5.0]]], dtype=np.float32)
    log_field = np.full_like(image, np.log(2.0))
    mask = np.array([[True, True], [True, False]])
    out = augment.apply_bias_field(image, log_field, 3.0, brain_mask=mask)
    np.testing.assert_allclose(out[0][mask], [3.0, 1.0, 5.0], rtol=1e-6)
    assert out[0, 1, 1] == 0.0 and out.dtype == np.float32
    np.testing.assert_array_equal(image[0, 0], [0.0, -1.0])  # input untouched
    with pytest.raises(ValueError, match="shape"):
        augment.apply_bias_field(image, log_field[:, :1], 3.0)


def test_bias_field_equals_multiplying_the_raw_image() -> None:
    """On a z-scored image with the recorded mean/std, the augmentation is exactly what the
    field does to the raw intensities, z-scored with the same statistics."""
    from cascadeseg.data.preprocess_ops import zscore_brain_stats

    rng = np.random.default_rng(1)
    raw = rng.uniform(100.0, 900.0, size=(2, 10, 9, 8)).astype(np.float32)
    mask = np.ones((10, 9, 8), dtype=bool)
    mask[:2] = False
    raw[:, ~mask] = 0.0
    z, means, stds = zscore_brain_stats(raw, mask)
    log_field = augment.draw_bias_field(rng, 2, (10, 9, 8), strength=(0.1, 0.3), spacing=4.0)
    out = augment.apply_bias_field(z, log_field, means / stds, brain_mask=mask)
    expected = (raw * np.exp(log_field) - means[:, None, None, None]) / stds[:, None, None, None]
    np.testing.assert_allclose(out[:, mask], expected[:, mask], rtol=1e-4, atol=1e-4)
    assert not out[:, ~mask].any()


def test_draw_bias_field_strength_and_smoothness() -> None:
    rng = np.random.default_rng(0)
    fields = [
        augment.draw_bias_field(rng, 2, (32, 32, 32), strength=(0.1, 0.1), spacing=16.0)
        for _ in range(20)
    ]
    stacked = np.stack(fields)
    assert stacked.shape == (20, 2, 32, 32, 32) and stacked.dtype == np.float32
    # the requested standard deviation, over many draws (one crop holds a few control points)
    assert 0.07 < float(stacked.std()) < 0.13
    # smooth: neighbouring voxels differ by a small fraction of the field's spread (white
    # noise: about 1.1 standard deviations)
    step = np.abs(np.diff(stacked, axis=2)).mean()
    assert step < 0.2 * float(stacked.std())
    # deterministic for a seed; strength 0 gives no field
    a = augment.draw_bias_field(np.random.default_rng(3), 1, (8, 8, 8))
    b = augment.draw_bias_field(np.random.default_rng(3), 1, (8, 8, 8))
    np.testing.assert_array_equal(a, b)
    zero = augment.draw_bias_field(rng, 1, (8, 8, 8), strength=(0.0, 0.0))
    assert not zero.any()
    with pytest.raises(ValueError, match="3D"):
        augment.draw_bias_field(rng, 1, (8, 8))


def test_bias_field_groups_share_a_field() -> None:
    # channels 1 and 2 (T1, T1ce) share one field: equal everywhere, so their ratio is kept
    shape = (12, 12, 12)
    field = augment.draw_bias_field(np.random.default_rng(5), 4, shape, groups=[[1, 2]])
    assert field.shape == (4, *shape) and field.dtype == np.float32
    np.testing.assert_array_equal(field[1], field[2])
    for a, b in ((0, 1), (0, 3), (1, 3)):
        assert not np.allclose(field[a], field[b])  # the others each their own
    # one group of all: a single field; no groups: the draws of before (a seed's crops kept)
    one = augment.draw_bias_field(np.random.default_rng(5), 4, shape, groups=[[3, 0, 1, 2]])
    assert all(np.array_equal(one[0], one[c]) for c in range(1, 4))
    plain = augment.draw_bias_field(np.random.default_rng(5), 4, shape)
    np.testing.assert_array_equal(
        plain, augment.draw_bias_field(np.random.default_rng(5), 4, shape, groups=[[2]])
    )
    for bad in ([[1, 4]], [[1, 2], [2, 3]], [[-1]]):
        with pytest.raises(ValueError, match="groups"):
            augment.draw_bias_field(np.random.default_rng(5), 4, shape, groups=bad)


def test_compartment_contrast_by_hand() -> None:
    # labels 1 and 3 in a line of voxels; hard masks: each compartment gets its own factor
    label = np.array([0, 1, 1, 2, 3, 3, 0])
    logs = np.log(np.array([[2.0, 0.5], [1.0, 1.0], [0.25, 4.0]], np.float32))  # (3, C=2)
    field = augment.compartment_log_field(label, logs, sigma=0)
    expected = np.log(np.array([[1, 2, 2, 1, 0.25, 0.25, 1], [1, 0.5, 0.5, 1, 4, 4, 1]]))
    np.testing.assert_allclose(field, expected, rtol=1e-6)
    # applied to a z-scored image: the raw intensities of each compartment are multiplied
    raw = np.arange(1.0, 8.0, dtype=np.float32)
    z = np.stack([(raw - 4.0) / 2.0] * 2)
    out = augment.apply_bias_field(z, field, 2.0)
    np.testing.assert_allclose(out * 2.0 + 4.0, raw * np.exp(expected), rtol=1e-5)


def _enhancing_crop() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 10^3 crop: T1 random, T1ce = 0.5 * T1 + 0.3 outside the tumour, ET bright (5) in a
    3^3 block, necrosis (label 1) in another, edema (2) around; the brain all but one slab."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 10, 10, 10)).astype(np.float32)
    image[2] = 0.5 * image[1] + 0.3
    label = np.zeros((10, 10, 10), np.int64)
    label[2:8, 2:8, 2:8] = 2
    label[3:6, 3:6, 3:6] = 3
    label[6:8, 6:8, 6:8] = 1
    image[2][label == 3] = 5.0
    brain = np.ones((10, 10, 10), bool)
    brain[9] = False
    return image, label, brain


def test_erase_enhancement_by_hand() -> None:
    image, label, brain = _enhancing_crop()
    kept = (image.copy(), label.copy())
    out, new_label, soft = augment.erase_enhancement(image, label, None, brain, t1=1, t1ce=2)
    assert soft is None
    et = label == 3
    # T1ce in the enhancing tumour is T1 on T1ce's scale (the fit on the healthy voxels)
    np.testing.assert_allclose(out[2][et], 0.5 * image[1][et] + 0.3, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[2][~et], image[2][~et])
    np.testing.assert_array_equal(out[[0, 1, 3]], image[[0, 1, 3]])
    # ET becomes non-enhancing core: labels 1 where it was, WT and TC unchanged
    np.testing.assert_array_equal(new_label, np.where(et, 1, label))
    # the inputs are untouched
    np.testing.assert_array_equal(image, kept[0])
    np.testing.assert_array_equal(label, kept[1])


def test_erase_enhancement_weights_partial_volumes_and_keeps_other_crops() -> None:
    image, label, brain = _enhancing_crop()
    soft = np.zeros((3, 10, 10, 10), np.uint8)
    soft[0][label > 0] = 255
    soft[1][(label == 1) | (label == 3)] = 255
    soft[2][label == 3] = 255
    soft[2][5, 5, 6] = 51  # a fifth of this voxel (outside the hard ET block) is ET
    out, _, new_soft = augment.erase_enhancement(image, label, soft, brain, t1=1, t1ce=2)
    assert new_soft is not None and not new_soft[2].any()
    np.testing.assert_array_equal(new_soft[:2], soft[:2])  # WT and TC fractions kept
    plain = 0.5 * image[1, 5, 5, 6] + 0.3
    expected = image[2, 5, 5, 6] + 0.2 * (plain - image[2, 5, 5, 6])
    assert out[2, 5, 5, 6] == pytest.approx(expected, rel=1e-5)
    # too few healthy voxels to fit: the identity (T1ce = T1 in the tumour)
    out, _, _ = augment.erase_enhancement(image, label, None, brain, t1=1, t1ce=2,
                                          min_fit_voxels=10**4)  # fmt: skip
    np.testing.assert_allclose(out[2][label == 3], image[1][label == 3], atol=1e-6)
    # a crop without enhancing tumour comes back as it was, the same arrays
    no_et = np.where(label == 3, 1, label)
    back = augment.erase_enhancement(image, no_et, None, brain, t1=1, t1ce=2)
    assert back[0] is image and back[1] is no_et and back[2] is None


def test_compartment_contrast_fades_over_the_border() -> None:
    label = np.zeros((21, 21, 21), np.int64)
    label[6:15, 6:15, 6:15] = 1  # the border between voxels 5 and 6
    field = augment.compartment_log_field(label, np.array([[0.2], [0.0], [0.0]], np.float32))
    profile = field[0, :, 10, 10]
    assert profile[0] == pytest.approx(0.0, abs=1e-6)  # far from the tumour: unchanged
    assert profile[10] == pytest.approx(0.2, abs=1e-3)  # deep inside: the full factor
    # across the edge the factor falls in steps, never all at once on the label's border
    assert 0.05 < profile[5] < profile[6] < 0.19
    assert np.all(np.diff(profile[:11]) >= -1e-7)


def test_draw_compartment_contrast_range_and_refusal() -> None:
    logs = augment.draw_compartment_contrast(np.random.default_rng(0), 3, 4, strength=0.2)
    assert logs.shape == (3, 4) and logs.dtype == np.float32
    assert np.all(np.abs(np.exp(logs) - 1) <= 0.2 + 1e-6)
    assert np.ptp(logs) > 0.1  # independent factors, not one for all
    with pytest.raises(ValueError, match="strength"):
        augment.draw_compartment_contrast(np.random.default_rng(0), 3, 4, strength=1.0)


@pytest.mark.parametrize("changed", [1, 2, 3])
def test_draw_compartment_contrast_changes_only_some_channels(changed: int) -> None:
    touched = set()
    for seed in range(40):
        logs = augment.draw_compartment_contrast(
            np.random.default_rng(seed), 3, 4, strength=0.2, changed=changed
        )
        moved = np.flatnonzero(np.any(logs != 0, axis=0))
        assert len(moved) == changed  # the other channels keep factor 1 (log 0) exactly
        touched.update(moved.tolist())
    assert touched == {0, 1, 2, 3}  # which channels is drawn, not fixed
    # 0 and as many as there are channels: all of them
    for all_ in (0, 4):
        logs = augment.draw_compartment_contrast(np.random.default_rng(1), 3, 4, changed=all_)
        assert np.all(logs != 0)
    with pytest.raises(ValueError, match="changed"):
        augment.draw_compartment_contrast(np.random.default_rng(0), 3, 4, changed=-1)
