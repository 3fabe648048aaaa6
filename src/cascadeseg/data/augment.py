"""Training augmentations: deterministic functions plus parameter draws (TorchIO's pattern).

Every random augmentation is split in two: ``draw_*(rng, ...)`` draws the parameters from an
explicit :class:`numpy.random.Generator`, and a pure function applies them. The functions are
tested on hand-computed tiny arrays; the draws make a run reproducible from a seed.

Arrays are channel-first images ``(C, *spatial)`` and label maps / masks ``(*spatial)``;
``spatial`` is ``(X, Y, Z)`` in 3D and ``(H, W)`` in 2D.

Recipes:

* two-stage cascaded U-Net (sec. 3.1): intensity shift in [-0.1, 0.1] standard deviations and
  scale in [0.9, 1.1] per channel, random 128^3 crops, a flip with p = 0.5 on each axis;
* CU-Net (sec. 3.1): random rotation and random flip of 2D slices.

Beyond the papers, an optional smooth multiplicative bias field (:func:`draw_bias_field`,
:func:`apply_bias_field`; MONAI's ``RandBiasField`` and TorchIO's ``RandomBiasField`` do the same
on raw intensities) teaches a short training run that a smooth brightening is not tumour, and
an optional contrast change per tumour compartment (:func:`draw_compartment_contrast`,
:func:`compartment_log_field`; SynthSeg's intensities drawn per label, in a mild form) teaches it
that no one sequence's contrast between core and edema is fixed. An optional erasure of the
enhancement (:func:`erase_enhancement`) turns a crop of an enhancing tumour into one whose core
does not enhance, the kind of core a short run meets in few cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cascadeseg.data.labels import BACKGROUND, ET, NCR, REGIONS, label_to_regions
from cascadeseg.data.smooth_fields import smooth_noise

# --------------------------------------------------------------------------------------------
# Intensity


def draw_intensity(
    rng: np.random.Generator,
    channels: int,
    *,
    shift: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel shift (in standard deviations) and scale factors.

    Args:
        rng: the generator.
        channels: number of image channels.
        shift: shifts are uniform in ``[-shift, shift]`` (two-stage paper: 0.1).
        scale: scales are uniform in this range (two-stage paper: 0.9 to 1.1).

    Returns:
        ``(shifts, scales)``, each ``(channels,)`` float32.
    """
    shifts = rng.uniform(-shift, shift, size=channels).astype(np.float32)
    scales = rng.uniform(scale[0], scale[1], size=channels).astype(np.float32)
    return shifts, scales


def shift_scale_intensity(
    image: np.ndarray,
    shifts: np.ndarray,
    scales: np.ndarray,
    *,
    brain_mask: np.ndarray | None = None,
    std: np.ndarray | float = 1.0,
) -> np.ndarray:
    """``(image + shift * std) * scale`` per channel.

    The images are z-scored over the brain (preprocessing), so one standard deviation is 1 by
    default. With ``brain_mask``, voxels outside the brain stay exactly 0, as at inference time
    (the paper does not say; keeping the background fixed means the network never sees a
    shifted background it will not meet at test time).

    Args:
        image: ``(C, *spatial)`` float32.
        shifts: ``(C,)`` shift in standard deviations.
        scales: ``(C,)`` multiplicative factors.
        brain_mask: ``(*spatial)`` bool, or ``None`` to change every voxel.
        std: ``(C,)`` or scalar standard deviation of each channel.

    Returns:
        ``(C, *spatial)`` float32 (a new array).
    """
    channels = image.shape[0]
    expand = (slice(None),) + (None,) * (image.ndim - 1)
    shift_values = (np.asarray(shifts, np.float32) * np.asarray(std, np.float32)).reshape(channels)
    out = (image + shift_values[expand]) * np.asarray(scales, np.float32).reshape(channels)[expand]
    out = out.astype(np.float32, copy=False)
    if brain_mask is not None:
        out *= brain_mask[None]
    return out


# --------------------------------------------------------------------------------------------
# Bias field


def draw_bias_field(
    rng: np.random.Generator,
    channels: int,
    shape: Sequence[int],
    *,
    strength: tuple[float, float] = (0.05, 0.2),
    spacing: float = 30.0,
    groups: Sequence[Sequence[int]] = (),
) -> np.ndarray:
    """Smooth log bias field, one per channel or per group of channels, of a random strength.

    The field is a cubic B-spline of Gaussian control points ``spacing`` voxels apart (the
    synthetic generator's own bias model, :func:`cascadeseg.data.smooth_fields.smooth_noise`),
    scaled to a standard deviation drawn from ``strength``. The field is stationary, so a field
    drawn on a crop is distributed as the crop of a field drawn on the whole volume. Channels
    of one group get the same field (same shape, same strength): their ratio, e.g. T1ce over
    T1 where contrast agent enhances, is left as it was.

    Args:
        rng: the generator.
        channels: number of image channels.
        shape: spatial shape ``(X, Y, Z)`` of the crop (voxels).
        strength: range of the standard deviation of the log field (0.2: the field's 95th
            percentile is about 1.4 times its median).
        spacing: distance between control points in voxels (larger: smoother).
        groups: disjoint groups of channel numbers that share one field; every channel in
            no group has its own.

    Returns:
        ``(channels, X, Y, Z)`` float32 log field (multiply the intensities by its exponential).
    """
    if len(shape) != 3:
        raise ValueError(f"the bias field is 3D; got a spatial shape {tuple(shape)}")
    owner = _field_owners(channels, groups)
    fields = int(owner.max()) + 1
    stds = rng.uniform(strength[0], strength[1], size=fields).astype(np.float32)
    field_ = smooth_noise(rng, shape, spacing=spacing, channels=fields)
    field_ *= stds.reshape((fields,) + (1,) * len(shape))
    return field_ if fields == channels else field_[owner]


def _field_owners(channels: int, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """``(channels,)`` int: which of the drawn fields each channel takes, numbered in order of
    each field's first channel (no groups: ``0, 1, ..., channels - 1``)."""
    first = np.arange(channels)  # each channel's field, named by its first channel
    grouped: set[int] = set()
    for group in groups:
        for c in group:
            if not 0 <= c < channels or c in grouped:
                raise ValueError(f"bias field groups {groups}: channel {c} out of range or twice")
            grouped.add(c)
            first[c] = min(group)
    return np.unique(first, return_inverse=True)[1].astype(np.int64)


def apply_bias_field(
    image: np.ndarray,
    log_field: np.ndarray,
    offsets: np.ndarray | float,
    *,
    brain_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Multiply the raw intensities behind a z-scored image by ``exp(log_field)``.

    A z-scored channel is ``z = (I - m) / s``, so ``I / s = z + k`` with ``k = m / s`` (the
    brain's mean over its standard deviation, recorded per channel by preprocessing). A field
    ``b`` multiplies ``I``, hence ``z' = (z + k) * b - k``: bright tissue brightens more than dark
    tissue, as in a scanner, where adding a smooth offset would brighten both alike. The image
    is not z-scored again: the global change that would undo is what the intensity shift and
    scale augmentation already covers.

    Args:
        image: ``(C, *spatial)`` float32, z-scored over the brain.
        log_field: ``(C, *spatial)`` log bias field (:func:`draw_bias_field`).
        offsets: ``(C,)`` or scalar ``k = mean / std`` of each channel's brain intensities.
        brain_mask: ``(*spatial)`` bool; voxels outside it stay exactly 0.

    Returns:
        ``(C, *spatial)`` float32 (a new array).
    """
    if log_field.shape != image.shape:
        raise ValueError(f"field {log_field.shape} and image {image.shape} differ in shape")
    channels = image.shape[0]
    expand = (slice(None),) + (None,) * (image.ndim - 1)
    k = np.broadcast_to(np.asarray(offsets, np.float32), (channels,))[expand]
    out = (image + k) * np.exp(log_field.astype(np.float32)) - k
    out = out.astype(np.float32, copy=False)
    if brain_mask is not None:
        out *= brain_mask[None]
    return out


# --------------------------------------------------------------------------------------------
# Tumour compartment contrast


def draw_compartment_contrast(
    rng: np.random.Generator,
    compartments: int,
    channels: int,
    *,
    strength: float = 0.2,
    changed: int = 0,
) -> np.ndarray:
    """Log intensity factors of each tumour compartment in each channel.

    Args:
        rng: the generator.
        compartments: number of tumour labels (3: necrosis/non-enhancing core, edema, enhancing).
        channels: number of image channels.
        strength: each factor is uniform in ``[1 - strength, 1 + strength]`` (0 <= strength < 1).
        changed: how many channels, drawn at random, get factors (the others keep factor 1);
            0: all of them.

    Returns:
        ``(compartments, channels)`` float32 natural logarithms of the factors.
    """
    if not 0 <= strength < 1:
        raise ValueError(f"strength must be in [0, 1), got {strength}")
    if changed < 0:
        raise ValueError(f"changed must be >= 0, got {changed}")
    factors = rng.uniform(1 - strength, 1 + strength, size=(compartments, channels))
    if 0 < changed < channels:
        kept = rng.choice(channels, size=channels - changed, replace=False)
        factors[:, kept] = 1.0
    return np.log(factors).astype(np.float32)


def compartment_log_field(
    label: np.ndarray, log_factors: np.ndarray, *, sigma: float = 1.0
) -> np.ndarray:
    """A log field that scales each tumour compartment's intensities by its own factor.

    Compartment ``k`` is label ``k + 1`` (the internal labels: 1 necrosis or non-enhancing core,
    2 edema, 3 enhancing tumour); its mask is smoothed by a Gaussian of ``sigma`` voxels, so the
    factor fades over the border as a partial volume does and the image gains no step exactly
    on the label's edge for a network to learn. For :func:`apply_bias_field`.

    Args:
        label: ``(*spatial)`` internal label map.
        log_factors: ``(compartments, C)`` (:func:`draw_compartment_contrast`).
        sigma: standard deviation of the smoothing, in voxels (0: hard masks).

    Returns:
        ``(C, *spatial)`` float32 log field, 0 away from the tumour.
    """
    channels = log_factors.shape[1]
    field_ = np.zeros((channels, *label.shape), np.float32)
    expand = (slice(None),) + (None,) * label.ndim
    for k, logs in enumerate(np.asarray(log_factors, np.float32)):
        mask = (label == k + 1).astype(np.float32)
        if not mask.any():
            continue
        weight = ndimage.gaussian_filter(mask, sigma, mode="nearest") if sigma > 0 else mask
        field_ += logs[expand] * weight[None]
    return field_


def erase_enhancement(
    image: np.ndarray,
    label: np.ndarray,
    soft: np.ndarray | None,
    brain_mask: np.ndarray,
    *,
    t1: int,
    t1ce: int,
    min_fit_voxels: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The crop as if no contrast agent had reached its enhancing tumour.

    Contrast enhancement is the only difference between T1ce and T1 in healthy tissue, so T1ce
    without it is T1 on T1ce's scale: inside the enhancing tumour, T1ce becomes ``a * T1 + b``,
    fitted by least squares on the crop's brain voxels outside the tumour (the two sequences are
    z-scored separately and carry different fields); elsewhere it stays. The enhancing tumour is
    relabelled non-enhancing core (label 1), so WT and TC are unchanged and ET is empty: the
    crop shows a core without enhancement, found from the other sequences, as in lower-grade
    gliomas. With region fractions (``soft``), the ET fraction of each voxel is the weight of
    the replacement (partial volumes at the rim's border).

    Args:
        image: ``(C, *spatial)`` float32 z-scored crop.
        label: ``(*spatial)`` internal labels (3: enhancing tumour).
        soft: ``(3, *spatial)`` uint8 region fractions ``[WT, TC, ET]`` (x255) or ``None``.
        brain_mask: ``(*spatial)`` bool.
        t1, t1ce: the channels of T1 and T1ce.
        min_fit_voxels: below this many healthy brain voxels the fit is the identity.

    Returns:
        ``(image, label, soft)``: new arrays where changed, the inputs where the crop holds no
        enhancing tumour.
    """
    et_region = REGIONS.index("ET")
    et = (label == ET) if soft is None else soft[et_region] > 0
    if not et.any():
        return image, label, soft
    weight = et.astype(np.float32) if soft is None else soft[et_region].astype(np.float32) / 255
    healthy = brain_mask & (label == BACKGROUND)
    slope, offset = 1.0, 0.0
    if int(healthy.sum()) >= min_fit_voxels:
        x, y = image[t1][healthy], image[t1ce][healthy]
        x_mean, y_mean = x.mean(), y.mean()
        var = float(x.var())
        if var > 1e-6:
            slope = float(((x - x_mean) * (y - y_mean)).mean()) / var
            offset = float(y_mean) - slope * float(x_mean)
    image = image.copy()
    plain = np.float32(slope) * image[t1] + np.float32(offset)
    image[t1ce] += weight * (plain - image[t1ce])
    label = np.where(label == ET, np.asarray(NCR, label.dtype), label)
    if soft is not None:
        soft = soft.copy()
        soft[et_region] = 0
    return image, label, soft


# --------------------------------------------------------------------------------------------
# Flips


def draw_flips(rng: np.random.Generator, spatial_dims: int, p: float = 0.5) -> tuple[int, ...]:
    """Spatial axes to flip, each independently with probability ``p`` (two-stage: 0.5).

    Returns:
        spatial axis indices (0-based over the spatial axes), ascending.
    """
    return tuple(int(a) for a in np.flatnonzero(rng.random(spatial_dims) < p))


def flip(array: np.ndarray, axes: Sequence[int], *, spatial_dims: int) -> np.ndarray:
    """Flip the given spatial axes (indices over the last ``spatial_dims`` axes); a view.

    Works for images ``(C, *spatial)`` and for label maps ``(*spatial)`` alike.
    """
    if not axes:
        return array
    offset = array.ndim - spatial_dims
    return np.flip(array, axis=tuple(offset + a for a in axes))


# --------------------------------------------------------------------------------------------
# 2D rotation


def draw_rotation(rng: np.random.Generator, max_degrees: float = 15.0) -> float:
    """An angle uniform in ``[-max_degrees, max_degrees]`` (the CU-Net paper gives no range;
    15 degrees is a common choice for brain slices)."""
    return float(rng.uniform(-max_degrees, max_degrees))


def rotate2d(array: np.ndarray, degrees: float, *, order: int) -> np.ndarray:
    """Rotate ``(H, W)`` or ``(C, H, W)`` arrays in the ``(H, W)`` plane about the centre.

    The shape is kept (``reshape=False``); voxels coming from outside are 0. Use ``order=1``
    for images and ``order=0`` for label maps and masks (no new label values).
    """
    if degrees == 0.0:
        return array
    return ndimage.rotate(
        array, degrees, axes=(-2, -1), reshape=False, order=order, mode="constant", cval=0.0
    )


# --------------------------------------------------------------------------------------------
# Crops


def draw_crop_start(
    rng: np.random.Generator,
    shape: Sequence[int],
    size: Sequence[int],
    *,
    foreground: np.ndarray | Sequence[np.ndarray] | None = None,
    foreground_prob: float = 0.0,
    overhang: float = 0.0,
) -> tuple[int, ...]:
    """Start corner of a crop of ``size`` from a volume of ``shape``.

    With probability ``foreground_prob`` (nnU-Net uses 1/3; the two-stage paper crops uniformly)
    the crop is centred on a random foreground voxel, shifted where needed so that it stays
    inside the volume; otherwise the start is uniform. Where the volume is smaller than the
    crop the start is negative (the crop is padded), and the volume lands at a random place in it.

    ``overhang`` lets a crop reach past the volume's border by that fraction of its size on each
    side (padded). With 0 a voxel at the border lies in one of the ``shape - size + 1`` possible
    crops along an axis and a central voxel in all of them: on a brain-cropped volume the
    brain's periphery (cortex, vertex, posterior fossa) is then rarely seen. With 0.5 the crop
    centre is uniform over the volume and a border voxel is seen about half as often as a
    central one, as when crops are drawn from the whole 240 x 240 x 155 BraTS grid (the
    two-stage paper) rather than from the brain's box.

    Args:
        rng: the generator.
        shape: spatial shape of the volume.
        size: spatial shape of the crop.
        foreground: ``(N, ndim)`` integer coordinates of foreground voxels (may be empty),
            or a list of such arrays, one per region (:func:`region_coordinates`): a centred
            crop then first draws one of the non-empty regions, uniformly.
        foreground_prob: probability of a foreground-centred crop.
        overhang: fraction of the crop (0 to 0.5) that may lie past each border of the volume.

    Returns:
        start index per spatial axis (may be negative).
    """
    if not 0.0 <= overhang <= 0.5:
        raise ValueError(f"overhang={overhang}: must be in [0, 0.5]")
    shape_a = np.asarray(shape, dtype=np.int64)
    size_a = np.asarray(size, dtype=np.int64)
    # Valid starts: the crop lies inside the volume, or contains all of it where it is smaller;
    # widened by the overhang on both sides.
    extend = np.floor(overhang * size_a).astype(np.int64)
    low = np.minimum(0, shape_a - size_a) - extend
    high = np.maximum(0, shape_a - size_a) + extend
    pools = _foreground_pools(foreground)
    centred = bool(pools) and foreground_prob > 0 and rng.random() < foreground_prob
    if centred:
        pool = pools[int(rng.integers(len(pools)))] if len(pools) > 1 else pools[0]
        voxel = np.asarray(pool[rng.integers(len(pool))], dtype=np.int64)
        start = np.clip(voxel - size_a // 2, low, high)
    else:
        start = np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])
    return tuple(int(s) for s in start)


def _foreground_pools(foreground: np.ndarray | Sequence[np.ndarray] | None) -> list[np.ndarray]:
    """The non-empty coordinate arrays of ``foreground`` (one array, or one per region)."""
    if foreground is None:
        return []
    arrays = [foreground] if isinstance(foreground, np.ndarray) else list(foreground)
    return [a for a in arrays if len(a) > 0]


def crop(
    array: np.ndarray, start: Sequence[int], size: Sequence[int], *, pad_value: float = 0
) -> np.ndarray:
    """The window ``[start, start + size)`` of the last ``len(size)`` axes, padded where it
    leaves the array.

    Works on images ``(C, *spatial)`` and label maps ``(*spatial)``. The result is a new
    C-contiguous array (never a view of a memory-mapped cache file).
    """
    spatial_dims = len(size)
    lead = array.shape[: array.ndim - spatial_dims]
    shape = array.shape[array.ndim - spatial_dims :]
    out = np.full((*lead, *size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for s, n, extent in zip(start, size, shape):
        lo, hi = max(s, 0), min(s + n, extent)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    keep = (slice(None),) * len(lead)
    out[keep + tuple(dst)] = array[keep + tuple(src)]
    return out


def centre_crop_start(shape: Sequence[int], size: Sequence[int]) -> tuple[int, ...]:
    """Start corner of the centred crop (negative where the volume is smaller: padding)."""
    return tuple((int(n) - int(s)) // 2 for n, s in zip(shape, size))


def foreground_coordinates(
    label: np.ndarray, *, max_points: int | None = 10000, seed: int = 0
) -> np.ndarray:
    """Coordinates of the tumour voxels (label > 0), subsampled to ``max_points``.

    nnU-Net stores a 10000-voxel sample per class for the same purpose: drawing a centre from
    a subsample is as good as from all voxels and keeps the memory small.

    Returns:
        ``(N, ndim)`` int32 coordinates.
    """
    return _coordinates(np.asarray(label) > 0, max_points, seed)


def region_coordinates(
    label: np.ndarray, *, max_points: int | None = 10000, seed: int = 0
) -> list[np.ndarray]:
    """Coordinates of each nested region ``[WT, TC, ET]`` of an internal label map, each
    subsampled to ``max_points``.

    With these as ``foreground`` of :func:`draw_crop_start` a centred crop is centred on a
    region drawn uniformly among those the case has, then on one of its voxels: nnU-Net's
    oversampling per class (per region in its region-based BraTS training). Drawn over all
    tumour voxels instead, a centre lies in the edema nine times in ten in a case whose core is
    a tenth of its tumour, so small cores (tiny tumours, the cores of tumours without
    enhancement) are rarely near a crop's centre.

    Returns:
        three ``(N_r, ndim)`` int32 arrays (empty for regions the case lacks).
    """
    regions = label_to_regions(np.asarray(label))
    return [_coordinates(region, max_points, seed) for region in regions]


def _coordinates(mask: np.ndarray, max_points: int | None, seed: int) -> np.ndarray:
    """``(N, ndim)`` int32 coordinates of ``mask``, a sorted random subsample of ``max_points``."""
    flat = np.flatnonzero(mask.reshape(-1))
    if max_points is not None and flat.size > max_points:
        flat = np.sort(np.random.default_rng(seed).choice(flat, max_points, replace=False))
    return np.stack(np.unravel_index(flat, mask.shape), axis=1).astype(np.int32)
