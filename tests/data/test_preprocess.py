"""Preprocessing: brain mask, crop, z-score, reorientation, resampling, N4, exact restoration."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cascadeseg.data.case import Case
from cascadeseg.data.labels import label_to_regions
from cascadeseg.data.preprocess import (
    Geometry,
    PreprocessConfig,
    preprocess_case,
    restore_to_source,
    to_preprocessed_grid,
)
from cascadeseg.data.preprocess_ops import (
    bounding_box,
    brain_mask_of,
    n4_correct,
    reorient,
    resample_label,
    resample_to_shape,
    zscore_brain,
    zscore_brain_stats,
)
from cascadeseg.errors import ConfigError, InputError
from toy import make_tiny_case


def padded_case(pad: tuple[int, int, int] = (6, 3, 5), **kwargs: object) -> Case:
    """A toy case embedded in a larger zero volume, so the brain crop really crops."""
    case = make_tiny_case(**kwargs)  # type: ignore[arg-type]
    shape = tuple(s + 2 * p for s, p in zip(case.image.shape[1:], pad))
    inner = tuple(slice(p, p + s) for p, s in zip(pad, case.image.shape[1:]))
    image = np.zeros((4, *shape), dtype=np.float32)
    image[(slice(None), *inner)] = case.image
    label = np.zeros(shape, dtype=np.uint8)
    label[inner] = case.label
    return Case(image=image, label=label, meta=replace(case.meta, shape=shape))


def reoriented_copy(case: Case) -> Case:
    """The same head stored as (z, x, y) with the first stored axis flipped."""
    depth = case.image.shape[3]
    image = np.ascontiguousarray(np.transpose(case.image, (0, 3, 1, 2))[:, ::-1])
    label = np.ascontiguousarray(np.transpose(case.label, (2, 0, 1))[::-1])
    # new voxel (i, j, k) is old voxel (x=j, y=k, z=depth-1-i)
    new_to_old = np.zeros((4, 4))
    new_to_old[0, 1] = new_to_old[1, 2] = new_to_old[3, 3] = 1
    new_to_old[2, 0], new_to_old[2, 3] = -1, depth - 1
    old = case.meta.spacing
    meta = replace(
        case.meta,
        affine=case.meta.affine @ new_to_old,
        spacing=(old[2], old[0], old[1]),
        shape=label.shape,
    )
    return Case(image=image, label=label, meta=meta)


def test_brain_mask_and_bounding_box_by_hand() -> None:
    image = np.zeros((2, 6, 5, 4), dtype=np.float32)
    image[0, 2, 1, 1] = 3.0
    image[1, 3, 3, 2] = -1.0  # non-zero in one modality only is still brain
    mask = brain_mask_of(image)
    assert mask.sum() == 2 and mask[2, 1, 1] and mask[3, 3, 2]
    assert bounding_box(mask) == ((2, 4), (1, 4), (1, 3))
    # the margin grows the box and is clipped to the array
    assert bounding_box(mask, margin=2) == ((0, 6), (0, 5), (0, 4))
    assert bounding_box(np.zeros((3, 3, 3), bool)) == ((0, 3), (0, 3), (0, 3))


def test_zscore_by_hand() -> None:
    image = np.zeros((1, 2, 2, 1), dtype=np.float32)
    image[0, :, :, 0] = [[1.0, 2.0], [3.0, 7.0]]
    mask = np.array([[True, True], [True, False]])[..., None]
    out = zscore_brain(image, mask)
    expected = np.array([-1.0, 0.0, 1.0]) * np.sqrt(1.5)  # mean 2, std sqrt(2/3)
    np.testing.assert_allclose(out[0][mask], expected, rtol=1e-6)
    assert out[0, 1, 1, 0] == 0.0  # background (7 outside the mask) becomes 0
    assert out.dtype == np.float32
    # a constant channel gives zeros, not NaN
    assert not zscore_brain(np.ones((1, 2, 2, 1), np.float32), mask).any()


def test_zscore_stats_and_the_recorded_mean_over_std() -> None:
    image = np.zeros((1, 2, 2, 1), dtype=np.float32)
    image[0, :, :, 0] = [[1.0, 2.0], [3.0, 7.0]]
    mask = np.array([[True, True], [True, False]])[..., None]
    out, means, stds = zscore_brain_stats(image, mask)
    np.testing.assert_array_equal(out, zscore_brain(image, mask))
    np.testing.assert_allclose(means, [2.0])
    np.testing.assert_allclose(stds, [np.sqrt(2.0 / 3.0)], rtol=1e-6)
    # preprocessing records mean / std of each channel's brain intensities (bias augmentation)
    case = padded_case()
    pre = preprocess_case(case)
    raw = case.image[:, case.image.any(axis=0)]
    expected = raw.mean(axis=1) / raw.std(axis=1)
    np.testing.assert_allclose(pre.extra["mean_over_std"], expected, rtol=1e-3)


def test_zscore_statistics_over_brain() -> None:
    pre = preprocess_case(padded_case())
    brain = pre.brain_mask
    values = pre.image[:, brain]
    np.testing.assert_allclose(values.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(values.std(axis=1), 1.0, atol=1e-5)
    assert not pre.image[:, ~brain].any()
    assert pre.image.dtype == np.float32 and pre.label is not None and pre.label.dtype == np.uint8


def test_crop_box_and_exact_round_trip() -> None:
    case = padded_case(pad=(6, 3, 5))
    cfg = PreprocessConfig(crop_margin=2)
    pre = preprocess_case(case, cfg)
    source_box = bounding_box(brain_mask_of(case.image))
    # BraTS affine flips x and y to reach RAS: the box mirrors on those axes.
    shape = case.image.shape[1:]
    expected = []
    for axis, (lo, hi) in enumerate(source_box):
        if axis < 2:
            lo, hi = shape[axis] - hi, shape[axis] - lo
        expected.append((max(lo - 2, 0), min(hi + 2, shape[axis])))
    assert pre.geometry.crop_box == tuple(expected)
    assert pre.image.shape == (4, *pre.geometry.shape)
    assert pre.image.shape[1] < shape[0]  # really cropped
    restored = restore_to_source(pre.label, pre, order=0)
    assert restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, case.label)
    np.testing.assert_array_equal(to_preprocessed_grid(case.label, pre, order=0), pre.label)
    # probabilities (C, x, y, z) come back on the source grid too, zeros outside the crop
    probs = np.stack([pre.brain_mask.astype(np.float32)] * 3)
    back = restore_to_source(probs, pre.geometry, order=1)
    assert back.shape == (3, *shape)
    np.testing.assert_array_equal(back[0] > 0.5, brain_mask_of(case.image))


def test_reorientation_gives_the_same_arrays_and_restores_exactly() -> None:
    case = padded_case()
    odd = reoriented_copy(case)
    assert odd.image.shape[1:] != case.image.shape[1:]
    pre, pre_odd = preprocess_case(case), preprocess_case(odd)
    np.testing.assert_array_equal(pre_odd.image, pre.image)
    np.testing.assert_array_equal(pre_odd.label, pre.label)
    np.testing.assert_array_equal(restore_to_source(pre_odd.label, pre_odd, order=0), odd.label)
    # probabilities go back in the odd case's own axis order
    restored = restore_to_source(pre.image[:2].copy(), pre, order=1)
    restored_odd = restore_to_source(pre_odd.image[:2].copy(), pre_odd, order=1)
    np.testing.assert_array_equal(restored_odd, np.transpose(restored, (0, 3, 1, 2))[:, ::-1])


def test_anisotropic_input_resampled_to_1mm_and_back() -> None:
    case = padded_case(pad=(4, 4, 2), shape=(32, 32, 12), spacing=(1.0, 1.0, 2.0))
    pre = preprocess_case(case, PreprocessConfig(target_spacing=(1.0, 1.0, 1.0)))
    assert pre.geometry.reoriented_shape == (40, 40, 16)
    assert pre.geometry.resampled_shape == (40, 40, 32)
    assert pre.spacing == (1.0, 1.0, 1.0)
    assert pre.geometry.zoom == (1.0, 1.0, 2.0)
    np.testing.assert_array_equal(restore_to_source(pre.label, pre, order=0), case.label)
    # nearest-neighbour upsampling repeats every slice twice
    full = np.zeros(pre.geometry.resampled_shape, np.uint8)
    full[pre.geometry.crop_slices] = pre.label
    np.testing.assert_array_equal(full[..., 0::2], full[..., 1::2])


def _sphere_label(shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]):
    """Nested spheres: edema out to radii[0], necrosis to radii[1], enhancing to radii[2]."""
    grid = np.indices(shape, dtype=np.float32)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    label = np.zeros(shape, np.uint8)
    for value, radius in zip((2, 1, 3), radii):
        label[dist <= radius] = value
    return label


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_region_label_resampling_keeps_what_covers_more_than_half_a_voxel() -> None:
    label = np.zeros((8, 8, 8), np.uint8)
    label[0:2, 0:2, 0:2] = 2  # a whole 2x2x2 block of edema
    label[4:6, 4:6, 4:6] = 2
    label[4:6, 4:6, 4] = 1  # necrosis over 4 of the block's 8 voxels, edema over the others
    label[4, 4, 5] = 1  # ... and 5 of 8: kept
    label[0, 6:8, 6] = 3  # a quarter block of enhancing tumour: dropped
    label[6:8, 0:2, 0:2] = 2
    label[6, 0, 0] = 3  # one voxel of 8 in a block that is otherwise edema
    out = resample_label(label, (4, 4, 4), method="regions")
    assert out.dtype == np.uint8 and out.shape == (4, 4, 4)
    expected = np.zeros((4, 4, 4), np.uint8)
    expected[0, 0, 0] = expected[3, 0, 0] = 2  # whole tumour all over those blocks
    expected[2, 2, 2] = 1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(resample_label(label, (8, 8, 8), method="regions"), label)
    with pytest.raises(ValueError, match="nearest"):
        resample_label(label, (4, 4, 4), method="cubic")


def test_region_label_resampling_lets_the_nearest_voxel_break_a_tie() -> None:
    """Half a block in a region: the nearest source voxel decides, so of two complementary
    halves exactly one is kept (kept or dropped always, volumes would drift)."""
    label = np.zeros((4, 4, 4), np.uint8)
    label[0:2, 0:2, 0] = 2  # lower half of block (0, 0, 0)
    label[2:4, 0:2, 1] = 2  # upper half of block (1, 0, 0)
    out = resample_label(label, (2, 2, 2), method="regions")
    nearest = resample_label(label, (2, 2, 2), method="nearest")
    np.testing.assert_array_equal(out, nearest)
    assert out[0, 0, 0] + out[1, 0, 0] == 2  # one of the two blocks, as edema


def test_region_label_resampling_stays_aligned_with_the_image() -> None:
    """Down to 2 mm and back (linear, threshold 0.5, as predictions return): the regions keep
    their place; nearest neighbour moves the map by half a source voxel per axis and loses more
    of each region, most of the smallest."""
    shape = (40, 40, 40)
    label = _sphere_label(shape, (19.3, 20.1, 18.7), (11.0, 5.0, 3.5))
    regions = label_to_regions(label)
    scores = {}
    for method in ("regions", "nearest"):
        small = resample_label(label, (20, 20, 20), method=method)
        back = resample_to_shape(
            label_to_regions(small).astype(np.float32), shape, order=1, channel_first=True
        )
        scores[method] = [_dice(back[i] >= 0.5, regions[i]) for i in range(3)]
        # the image's own downsampling averages each 2x2x2 block: a region's centre of mass
        # must stay where the image puts it
        if method == "regions":
            ys = np.argwhere(label_to_regions(small)[0]).mean(0) * 2 + 0.5
            np.testing.assert_allclose(ys, np.argwhere(regions[0]).mean(0), atol=0.3)
    # measured: regions 0.95 / 0.90 / 0.85, nearest 0.93 / 0.85 / 0.79
    assert min(scores["regions"]) > 0.84
    assert all(r > n + 0.02 for r, n in zip(scores["regions"], scores["nearest"]))


def test_preprocess_resamples_labels_as_configured() -> None:
    case = padded_case(pad=(4, 4, 4), shape=(32, 32, 32))
    by_regions = preprocess_case(
        case, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), label_resampling="regions")
    )
    nearest = preprocess_case(case, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0)))
    np.testing.assert_array_equal(by_regions.image, nearest.image)
    canonical = reorient(np.asarray(case.label), np.asarray(by_regions.geometry.orientation))
    expected = resample_label(canonical, by_regions.geometry.resampled_shape, method="regions")
    np.testing.assert_array_equal(by_regions.label, expected[by_regions.geometry.crop_slices])
    assert not np.array_equal(by_regions.label, nearest.label)
    with pytest.raises(ConfigError, match="label_resampling"):
        PreprocessConfig(label_resampling="linear")


def test_soft_label_resampling_keeps_the_region_fractions() -> None:
    case = padded_case(pad=(4, 4, 4), shape=(32, 32, 32))
    soft = preprocess_case(
        case, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), label_resampling="soft")
    )
    hard = preprocess_case(
        case, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), label_resampling="regions")
    )
    np.testing.assert_array_equal(soft.label, hard.label)  # the label map is the regions' one
    fractions = soft.region_fractions
    assert fractions is not None and fractions.dtype == np.uint8
    assert fractions.shape == (3, *soft.shape)
    regions = label_to_regions(soft.label)
    # more than half a voxel: in the label map; less than half: not (ties go either way)
    assert regions[fractions > 128].all() and not regions[fractions < 127].any()
    # the fractions add up to the source volumes (8 source voxels per 2 mm voxel)
    source = label_to_regions(np.asarray(case.label)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(fractions.sum(axis=(1, 2, 3)) / 255 * 8, source, rtol=0.01)
    assert hard.region_fractions is None
    unresampled = preprocess_case(case, PreprocessConfig(label_resampling="soft"))
    assert unresampled.region_fractions is None


def test_geometry_json_round_trip() -> None:
    pre = preprocess_case(
        reoriented_copy(padded_case()), PreprocessConfig(target_spacing=(1, 1, 1.5))
    )
    geometry = Geometry.from_dict(pre.geometry.to_dict())
    assert geometry == pre.geometry
    np.testing.assert_array_equal(
        restore_to_source(pre.label, geometry, order=0), restore_to_source(pre.label, pre, order=0)
    )


def test_n4_reduces_a_synthetic_bias_field() -> None:
    shape = (32, 32, 32)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    mask = (grid**2).sum(0) <= 0.8
    rng = np.random.default_rng(0)
    tissue = np.where(grid[1] > 0, 100.0, 140.0) + rng.normal(0, 2, shape)
    bias = np.exp(0.35 * grid[0] + 0.2 * grid[2])  # smooth multiplicative field
    image = np.where(mask, tissue * bias, 0).astype(np.float32)

    def spread(volume: np.ndarray) -> float:
        # coefficient of variation within one tissue class, where the bias is the only trend
        values = volume[mask & (grid[1] > 0.1)]
        return float(values.std() / values.mean())

    corrected = n4_correct(image, mask, (1.0, 1.0, 1.0), shrink_factor=2, iterations=(20, 20))
    assert corrected.dtype == np.float32
    assert not corrected[~mask].any()
    # before: 0.16, noise floor 0.02
    assert spread(corrected) < 0.25 * spread(image)


def test_n4_in_the_pipeline_runs() -> None:
    pre = preprocess_case(
        make_tiny_case(), PreprocessConfig(n4=True, n4_shrink_factor=2, n4_iterations=(5,))
    )
    assert np.isfinite(pre.image).all()
    np.testing.assert_allclose(pre.image[:, pre.brain_mask].std(axis=1), 1.0, atol=1e-4)
    assert "n4_seconds" in pre.extra


def test_n4_in_the_pipeline_corrects_on_the_cropped_resampled_grid() -> None:
    """N4 runs after resampling and cropping: a smooth multiplicative field on the source grid
    is removed on the preprocessed grid, and the brain mask is unchanged by it."""
    case = padded_case()
    shape = case.image.shape[1:]
    ramp = np.linspace(-1.0, 1.0, shape[0], dtype=np.float32)[:, None, None]
    biased = replace(case, image=(case.image * np.exp(0.4 * ramp)).astype(np.float32))
    base = PreprocessConfig(target_spacing=(1.5, 1.5, 1.5), crop_margin=1)
    plain = preprocess_case(biased, base)
    fixed = preprocess_case(
        biased, replace(base, n4=True, n4_shrink_factor=1, n4_iterations=(20, 20))
    )
    np.testing.assert_array_equal(fixed.brain_mask, plain.brain_mask)
    assert fixed.geometry == plain.geometry
    assert "n4_seconds" in fixed.extra

    def trend(pre: object) -> float:
        # correlation of the first modality with the x coordinate inside the brain
        image, mask = pre.image[0], pre.brain_mask  # type: ignore[attr-defined]
        x = np.broadcast_to(np.arange(mask.shape[0])[:, None, None], mask.shape)[mask]
        return abs(float(np.corrcoef(x, image[mask])[0, 1]))

    assert trend(fixed) < 0.5 * trend(plain)


def test_n4_channels_corrects_only_those_channels() -> None:
    case = make_tiny_case()
    base = PreprocessConfig(n4=True, n4_shrink_factor=2, n4_iterations=(5,))
    every = preprocess_case(case, base)
    plain = preprocess_case(case, replace(base, n4=False))
    only_t1ce = preprocess_case(case, replace(base, n4_channels=(2,)))
    np.testing.assert_array_equal(only_t1ce.image[2], every.image[2])
    for c in (0, 1, 3):
        np.testing.assert_array_equal(only_t1ce.image[c], plain.image[c])
    assert not np.array_equal(every.image[0], plain.image[0])  # N4 did change the others
    with pytest.raises(ConfigError, match="no channel 7"):
        preprocess_case(case, replace(base, n4_channels=(7,)))
    with pytest.raises(ConfigError):
        PreprocessConfig(n4_channels=(-1,))


def test_preprocess_config_from_dict() -> None:
    cfg = PreprocessConfig(
        target_spacing=(2.0, 2.0, 2.0),
        n4=True,
        crop_margin=2,
        n4_shrink_factor=6,
        n4_iterations=(50, 50, 50),
        n4_convergence=0.002,
        n4_channels=(2,),
        label_resampling="nearest",
    )
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()
    # a recipe's data section: keys that are not preprocessing settings are ignored
    assert PreprocessConfig.from_dict(
        {"n4": True, "n4_shrink_factor": 6, "patch_size": [48, 48, 48]}
    ) == PreprocessConfig(n4=True, n4_shrink_factor=6)
    with pytest.raises(ConfigError):
        PreprocessConfig.from_dict({"n4_shrink_factor": 0})


def test_recipe_and_checkpoint_carry_the_n4_settings() -> None:
    from cascadeseg.config import load_config
    from cascadeseg.inference.loading import preprocess_config_of

    overrides = ["data.n4=true", "data.n4_shrink_factor=6", "data.n4_iterations=[50,50,50]"]
    cfg = load_config("two_stage_cpu", overrides)
    pre = PreprocessConfig.from_data_config(cfg.data)
    assert (pre.n4, pre.n4_shrink_factor, pre.n4_iterations) == (True, 6, (50, 50, 50))
    assert pre.target_spacing == (2.0, 2.0, 2.0)
    # a checkpoint stores the resolved recipe as plain data
    assert preprocess_config_of({"data": pre.to_dict()}) == pre


def test_bad_config_and_empty_image() -> None:
    with pytest.raises(ConfigError):
        PreprocessConfig(target_spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError):
        PreprocessConfig(orientation="XYZ")
    with pytest.raises(ConfigError):
        PreprocessConfig(crop_margin=-1)
    case = make_tiny_case()
    empty = replace(case, image=np.zeros_like(case.image))
    with pytest.raises(InputError, match="toy_000"):
        preprocess_case(empty)


def test_restore_rejects_wrong_shape() -> None:
    pre = preprocess_case(make_tiny_case())
    with pytest.raises(ValueError, match="spatial shape"):
        restore_to_source(np.zeros((3, 3, 3), np.uint8), pre, order=0)
