"""The array operations of preprocessing (:mod:`cascadeseg.data.preprocess`), each pure.

Reorientation (:mod:`nibabel.orientations`), brain mask and bounding box, z-scoring over the
brain, resampling to a shape (``scipy.ndimage.zoom`` on voxel boxes) and N4 bias-field correction
(SimpleITK).
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

from cascadeseg.data.labels import label_to_regions, regions_to_label

#: A box of a 3D array: ``((start, stop), ...)`` per axis, stop exclusive.
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def orientation_transform(affine: np.ndarray, axcodes: str = "RAS") -> np.ndarray:
    """nibabel orientation transform from the voxel axes of ``affine`` to ``axcodes``.

    Returns:
        ``(3, 2)`` float array, row ``i`` = ``(output axis of input axis i, flip +-1)``.
    """
    return ornt_transform(io_orientation(np.asarray(affine)), axcodes2ornt(tuple(axcodes)))


def reorient(array: np.ndarray, ornt: np.ndarray, *, channel_first: bool = False) -> np.ndarray:
    """Apply an orientation transform to ``(X, Y, Z)`` or ``(C, X, Y, Z)`` arrays (a view)."""
    if channel_first:
        moved = np.moveaxis(array, 0, -1)
        return np.moveaxis(apply_orientation(moved, ornt), -1, 0)
    return apply_orientation(array, ornt)


def brain_mask_of(image: np.ndarray) -> np.ndarray:
    """Voxels that are non-zero in any modality.

    Args:
        image: ``(C, X, Y, Z)`` array (skull-stripped, background exactly 0).

    Returns:
        ``(X, Y, Z)`` bool.
    """
    mask = image[0] != 0
    for channel in image[1:]:
        mask |= channel != 0
    return mask


def bounding_box(mask: np.ndarray, margin: int = 0) -> Box:
    """Bounding box of the true voxels of a 3D mask, grown by ``margin`` and clipped to the array.

    Computed from ``np.any`` projections (three small reductions instead of ``argwhere``).

    Returns:
        ``((start, stop), ...)`` per axis, stop exclusive. An empty mask gives the whole array.
    """
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        size = mask.shape[axis]
        if hits.size == 0:
            return ((0, mask.shape[0]), (0, mask.shape[1]), (0, mask.shape[2]))
        box.append((max(0, int(hits[0]) - margin), min(size, int(hits[-1]) + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]


def zscore_brain(image: np.ndarray, mask: np.ndarray, *, eps: float = 1e-8) -> np.ndarray:
    """Per-channel z-score over brain voxels, background set to 0 (two-stage paper, sec. 3.1).

    Args:
        image: ``(C, X, Y, Z)`` array.
        mask: ``(X, Y, Z)`` bool brain mask.

    Returns:
        ``(C, X, Y, Z)`` float32 (see :func:`zscore_brain_stats`).
    """
    return zscore_brain_stats(image, mask, eps=eps)[0]


def zscore_brain_stats(
    image: np.ndarray, mask: np.ndarray, *, eps: float = 1e-8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`zscore_brain` and the statistics it used.

    Statistics are taken in float32 (pairwise summation keeps the mean accurate; the variance is
    the mean square of the centred values, which avoids the cancellation of ``E[x^2] - E[x]^2``).
    A channel with zero variance over the brain becomes all zeros.

    Args:
        image: ``(C, X, Y, Z)`` array.
        mask: ``(X, Y, Z)`` bool brain mask.

    Returns:
        ``(z, means, stds)``: ``z`` ``(C, X, Y, Z)`` float32; ``means`` and ``stds`` ``(C,)``
        float64, the brain mean and standard deviation of each channel (0 for an empty mask).
    """
    out = np.zeros(image.shape, dtype=np.float32)
    means = np.zeros(image.shape[0])
    stds = np.zeros(image.shape[0])
    n = int(np.count_nonzero(mask))
    if n == 0:
        return out, means, stds
    for c in range(image.shape[0]):
        values = np.asarray(image[c][mask], dtype=np.float32)
        means[c] = float(values.sum() / n)
        centred = values - np.float32(means[c])
        std = float(np.sqrt(np.dot(centred, centred) / n))
        stds[c] = std
        if std > eps:
            centred *= np.float32(1.0 / std)
            out[c][mask] = centred
    return out, means, stds


def resample_to_shape(
    array: np.ndarray, shape: tuple[int, int, int], *, order: int, channel_first: bool = False
) -> np.ndarray:
    """Resample an array so its spatial shape becomes ``shape`` (voxel centres aligned).

    ``scipy.ndimage.zoom`` with ``grid_mode=True`` maps voxel *boxes* onto each other (the field
    of view is kept), as SimpleITK/ITK resampling does. Nearest neighbour (order 0) followed by
    the inverse resampling returns the input exactly whenever the first step upsamples.

    Args:
        array: ``(X, Y, Z)`` or, with ``channel_first``, ``(C, X, Y, Z)``.
        shape: target spatial shape.
        order: 0 (nearest; labels, masks) or 1 (linear; images, probabilities).
        channel_first: whether ``array`` has a leading channel axis.

    Returns:
        array of the same dtype with spatial shape ``shape``.
    """
    spatial = array.shape[1:] if channel_first else array.shape
    if tuple(spatial) == tuple(shape):
        return array
    factors = [t / s for t, s in zip(shape, spatial)]

    def one(volume: np.ndarray) -> np.ndarray:
        out = ndimage.zoom(
            volume, factors, order=order, mode="nearest", grid_mode=True, prefilter=False
        )
        if out.shape != tuple(shape):  # zoom rounds; the factors are exact, so this is a guard
            raise RuntimeError(f"resampling gave shape {out.shape}, expected {tuple(shape)}")
        return out

    if channel_first:
        return np.stack([one(np.ascontiguousarray(v)) for v in array])
    return one(np.ascontiguousarray(array))


def region_fractions(label: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The fraction of each voxel of the ``shape`` grid that WT, TC and ET cover.

    The region masks of ``label`` (internal convention) resampled linearly on voxel boxes
    (:func:`resample_to_shape`): downsampling 1 mm to 2 mm, the mean of the eight source voxels.

    Returns:
        float32 ``(3, *shape)`` in ``[0, 1]``, channels ``[WT, TC, ET]``.
    """
    masks = label_to_regions(label).astype(np.float32)
    return resample_to_shape(masks, shape, order=1, channel_first=True)


def resample_label(
    label: np.ndarray,
    shape: tuple[int, int, int],
    *,
    method: str,
    fractions: np.ndarray | None = None,
) -> np.ndarray:
    """Resample an internal label map so its spatial shape becomes ``shape``.

    ``nearest`` keeps, for each target voxel, the source voxel nearest its centre. Downsampling
    1 mm to 2 mm, the centre of a 2 mm voxel sits between eight source voxels and the one taken
    is always the same corner: the label map moves by half a source voxel along every axis
    against the image (whose linear resampling averages the eight), and a region is kept or lost
    on one voxel of eight.

    ``regions`` resamples the masks of the nested regions WT, TC and ET linearly (on voxel boxes,
    as :func:`resample_to_shape`) and keeps each region where it covers more than half a target
    voxel, the nearest source voxel breaking exact ties; the label map is rebuilt from the three
    masks (:func:`regions_to_label`). This is nnU-Net's resampling of segmentations (each label's
    mask resampled, then thresholded at 0.5) on the regions the network predicts and BraTS
    scores, and the counterpart of how a prediction returns to the source grid (region
    probabilities resampled linearly, threshold 0.5). Measured on the demo's 8 held-out cases
    (1 mm to 2 mm and back, as a perfect prediction on the 2 mm grid would return): Dice against
    the reference WT 0.86-0.95, TC 0.69-0.96 through ``nearest``; WT 0.90-0.96, TC 0.77-0.97
    through ``regions``; region volumes on 12 training cases within 0.8% (``nearest``) and 0.5%.

    Args:
        label: ``(X, Y, Z)`` uint8 map in the internal convention (:mod:`cascadeseg.data.labels`).
        shape: target spatial shape.
        method: ``regions`` or ``nearest``.
        fractions: ``region_fractions(label, shape)`` when the caller has it already
            (``regions`` only; computed here otherwise).

    Returns:
        uint8 ``(*shape)`` internal label map.
    """
    if method == "nearest":
        return resample_to_shape(label, shape, order=0)
    if method != "regions":
        raise ValueError(f"label resampling must be 'regions' or 'nearest', got {method!r}")
    if tuple(label.shape) == tuple(shape):
        return label
    if fractions is None:
        fractions = region_fractions(label, shape)
    # A region covering exactly half a target voxel is common (a 2x2x2 block cut through its
    # middle): kept always, it would inflate region volumes by 1.5-4% (measured on the demo's
    # training cases at 2 mm; dropped always, they would shrink by 2-3%); the nearest source
    # voxel decides, which keeps them within 0.5%.
    tie = np.abs(fractions - np.float32(0.5)) < 1e-6
    nearest = label_to_regions(resample_to_shape(label, shape, order=0))
    return regions_to_label((fractions > 0.5) | (tie & nearest))


def n4_correct(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    shrink_factor: int = 4,
    iterations: tuple[int, ...] = (50, 50, 50, 50),
    convergence: float = 0.001,
) -> np.ndarray:
    """N4 bias-field correction of one modality (SimpleITK), background kept at 0.

    The field is fitted on the image shrunk by ``shrink_factor`` inside ``mask`` and evaluated at
    full resolution (``GetLogBiasFieldAsImage``), then divided out.

    Args:
        image: ``(X, Y, Z)`` float32 intensities (non-negative).
        mask: ``(X, Y, Z)`` bool, voxels used to fit the field.
        spacing: voxel size in mm along the array axes.
        shrink_factor: shrink factor per axis for the fit.
        iterations: maximum iterations per fitting level.
        convergence: convergence threshold per level.

    Returns:
        ``(X, Y, Z)`` float32, corrected inside ``mask``, 0 outside.
    """
    import SimpleITK as sitk  # optional, heavy: only when N4 is asked for

    # N4 works on log intensities: fit only where the modality is positive.
    fit_mask = mask & (image > 0)
    if np.count_nonzero(fit_mask) < 64:
        return np.where(mask, image, 0).astype(np.float32)
    # SimpleITK arrays are (z, y, x): transpose so the spacing stays with its axis.
    sitk_image = sitk.GetImageFromArray(np.ascontiguousarray(image.T, dtype=np.float32))
    sitk_image.SetSpacing([float(s) for s in spacing])
    sitk_mask = sitk.GetImageFromArray(np.ascontiguousarray(fit_mask.T, dtype=np.uint8))
    sitk_mask.CopyInformation(sitk_image)
    factor = [int(shrink_factor)] * 3
    shrunk_image = sitk.Shrink(sitk_image, factor)
    shrunk_mask = sitk.Shrink(sitk_mask, factor)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.SetConvergenceThreshold(float(convergence))
    corrector.Execute(shrunk_image, shrunk_mask)
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(sitk_image)).T
    corrected = image * np.exp(-log_field.astype(np.float32))
    return np.where(mask, corrected, 0).astype(np.float32)
