"""Synthetic BraTS-like cases built on real anatomy (the MNI152 templates shipped with nilearn).

Each case is made in five steps, all driven by one ``numpy.random.Generator`` seeded from the
case's seed, so a seed gives the same arrays on every machine:

1. **Anatomy.** The MNI152 grey-matter, white-matter and brain-mask templates (1 mm, loaded once
   per process) give tissue fractions CSF / GM / WM (CSF = brain - GM - WM). They are mapped into
   the BraTS grid (240 x 240 x 155, 1 mm, LPS voxel order like the BraTS files, brain centred) by
   a separable warp: a random scale per axis (MNI152 brains are larger than the SRI24 brains of
   BraTS), a smooth 1D wiggle per axis (regional shape variation), a translation and an optional
   left-right mirror. A separable warp is three cheap 1D interpolations instead of one 3D
   interpolation of the whole volume (measured ~4x faster than ``map_coordinates`` here).
2. **Tumour plan.** One lesion, or 2-3 (multifocal); a tiny tumour sometimes; no enhancing tumour
   sometimes (LGG-like). Centres lie mostly in white matter, in the cerebrum, deep enough for the
   tumour core to stay in the brain.
3. **Mass effect.** A radial displacement around each lesion (compact support, monotonic, so it
   never folds) pushes the surrounding anatomy away from the centre; the brain outline is kept
   (the skull does not move), so sulci and ventricles near the tumour are compressed.
4. **Tumour compartments.** Per lesion, a randomly rotated ellipsoid whose radius is deformed by a
   smooth random field (lobulated core), a necrotic centre (deformed by another field) inside an
   enhancing rim, and edema around the core that spreads preferentially along white matter
   (finger-like) and spares the ventricles. Soft partial-volume edges are used for the image;
   the label map is the 0.5 level of the same soft maps, so image and label agree. Label
   hierarchy holds by construction: ET and NCR form the core, edema surrounds the core (a ring
   of ``edema_min_margin_mm`` is always edema), everything lies inside the brain.
5. **Image formation.** Each modality is a linear mix of the tissue and tumour maps with contrasts
   from typical clinical MRI (table :data:`TISSUE_INTENSITY`), jittered per case; a smooth
   multiplicative bias field per modality (at most about BrainWeb's 40% INU); a sub-voxel to
   one-voxel misregistration of every modality but the reference (T1ce, the registration
   target of BraTS); Rician noise; skull stripping (background exactly 0); integer values in
   the int16 range like the BraTS files.

Speed: 0.5-2 s per full-size case in one process, measured on the shared (busy) 2-core
development machine (see :func:`benchmark_synth`); the templates are loaded once per process
(``lru_cache``, about 2 s). Work is restricted to the brain's box and each tumour's box.
Smooth random fields are made on a coarse grid and upsampled by tensor products of 1D cubic
B-spline matrices (BLAS), not by filtering the full volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cascadeseg.data.case import MODALITIES, Case, Meta
from cascadeseg.data.labels import ED, ET, NCR
from cascadeseg.data.synth_satellites import SoftMaps, add_satellites, satellite_margin_voxels
from cascadeseg.data.toy import brats_affine
from cascadeseg.errors import InputError

#: BraTS grid (voxels at 1 mm).
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
#: Where the centre of the brain's bounding box lands in the BraTS grid (voxels at 1 mm); SRI24
#: brains in BraTS files sit near the middle of the grid, spanning most of its 155 slices.
BRATS_BRAIN_CENTRE: tuple[float, float, float] = (119.5, 121.0, 76.0)

#: Layouts the generator writes, with their case-id patterns: the shape of the real datasets' ids
#: (so that tools expecting them work) but never a real id, so that synthetic cases cannot be
#: mistaken for, or written over, patient data: ``SynthBraTS2021_00000`` (real:
#: ``BraTS2021_00000``), ``BraTS-SYN-00000-000`` (real challenges: GLI, SSA, MET, PED, MEN),
#: ``SYNTH_000`` (MSD: ``BRATS_001``).
LAYOUT_CASE_IDS: dict[str, str] = {
    "brats2021": "SynthBraTS2021_{index:05d}",
    "brats2023": "BraTS-SYN-{index:05d}-000",
    "msd": "SYNTH_{index:03d}",
    "nnunet": "SynthBraTS2021_{index:05d}",
}
LAYOUT_CONVENTIONS: dict[str, str] = {
    "brats2021": "brats2021",
    "brats2023": "brats2023",
    "msd": "msd",
    "nnunet": "nnunet_brats",
}

#: Compartments whose intensities the images mix, in the column order of
#: :data:`TISSUE_INTENSITY`.
COMPARTMENTS: tuple[str, ...] = (
    "csf",
    "gm",
    "wm",
    "edema",
    "necrosis",
    "enhancing",
    "nonenhancing",
)

#: Relative intensity of each compartment (columns, :data:`COMPARTMENTS`) per modality (rows,
#: :data:`MODALITIES`). Typical clinical contrasts: T1 WM > GM > CSF; T2 CSF > GM > WM; FLAIR
#: suppresses CSF, GM > WM; T1ce like T1. Edema: bright on FLAIR/T2, mildly dark on T1.
#: Necrosis: dark on T1/T1ce, bright on T2. Enhancing tumour: bright on T1ce. Non-enhancing
#: tumour (the core of LGG-like cases): T2/FLAIR bright, T1 dark, no enhancement.
TISSUE_INTENSITY: np.ndarray = np.array(
    [
        # csf   gm    wm    edema necr  enh   nonenh
        [0.10, 0.62, 0.50, 1.00, 0.45, 0.78, 0.85],  # FLAIR
        [0.22, 0.58, 0.82, 0.50, 0.30, 0.56, 0.45],  # T1
        [0.24, 0.60, 0.80, 0.52, 0.26, 1.30, 0.48],  # T1ce (ET value drawn per case, see config)
        [1.00, 0.55, 0.38, 0.86, 0.95, 0.62, 0.80],  # T2
    ],
    dtype=np.float32,
)
_CSF, _GM, _WM, _EDEMA, _NECROSIS, _ENHANCING, _NONENHANCING = range(7)


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthetic generator. Lengths are in mm, probabilities per case.

    Attributes:
        shape_scale: output grid = BraTS grid x ``shape_scale`` (voxel size ``1 / shape_scale``
            mm). 1.0 gives the real 240 x 240 x 155 at 1 mm; tests use 0.25 (60 x 60 x 39, 4 mm).
        brain_scale: range of the isotropic scale applied to the MNI152 brain (SRI24/BraTS brains
            are smaller than MNI152's).
        brain_scale_jitter: extra independent scale per axis, +- this fraction.
        wiggle_mm: amplitude of the smooth 1D deformation per axis (regional shape variation).
        translation_mm: maximum shift of the brain in the grid, per axis.
        mirror_probability: probability of a left-right mirrored anatomy.
        p_no_et: probability of a case without enhancing tumour (LGG-like; ~15% in BraTS).
        p_tiny: probability of a tiny tumour (core radius in ``tiny_core_radius_mm``).
        p_multifocal: probability of 2-3 separate lesions.
        core_radius_mm: range of the main lesion's mean core radius.
        tiny_core_radius_mm: range of the core radius of tiny tumours.
        satellite_scale: size of secondary lesions relative to the main one.
        satellite_distance_mm: distance range of secondary lesion centres from the main centre.
        axis_ratio: range of the ellipsoid semi-axes relative to the mean radius.
        edema_ratio: edema radius / core radius.
        necrosis_ratio: necrotic radius / core radius.
        p_solid: probability that a lesion has no necrotic centre (solid enhancing or, without
            ET, solid non-enhancing core).
        min_necrotic_core_mm: lesions with a smaller core radius are solid (small enhancing
            lesions rarely show necrosis).
        core_irregularity: amplitude of the smooth radial deformation of the core (fraction).
        edema_irregularity: same for the edema.
        edema_wm_affinity: how much white matter extends the edema (finger-like spread), in
            units of the edema radius per unit WM fraction.
        edema_min_margin_mm: edema ring always present around the core (label hierarchy).
        edge_mm: width of the partial-volume ramp at the core and necrosis borders.
        edema_edge_mm: width of the ramp at the edema border (edema fades out).
        edema_fade: edema signal at its border relative to next to the core (1 = flat).
        mass_effect: range of the radial compression factor at the lesion centre (0 = none).
        mass_effect_support: radius of the mass effect, in units of the core radius.
        min_depth_mm: margin between the core's extent and the brain surface at the centre.
        wm_centre_probability: probability that a lesion centre lies in white matter (else GM).
        et_enhancement: T1ce intensity of enhancing tumour relative to healthy WM on T1ce.
        contrast_jitter: per-case multiplicative jitter of healthy tissue intensities (+-).
        tumour_jitter: per-case multiplicative jitter of tumour compartment intensities (+-).
        tumour_texture: amplitude of the smooth heterogeneity inside the tumour (fraction).
        tumour_texture_mm: spacing of that heterogeneity.
        intensity_scale: range of each modality's scanner gain (WM-ish tissue lands in the
            hundreds to a few thousand, like raw BraTS int16 images).
        bias_strength: range of the std of the log bias field per modality. The default's
            strongest field spans about 0.85-1.2 over the brain (5th-95th percentile), close
            to BrainWeb's strongest setting (40% INU: a field of 0.8-1.2 over the brain).
            Earlier revisions drew up to 0.2 (``--bias-strength 0.04 0.2`` reproduces them):
            fields up to 1.5-2x, more than twice BrainWeb's strongest, which made normal T1ce
            as bright as enhancing tumour.
        bias_spacing_mm: spacing of the bias field's control points (low frequency).
        noise_level: range of the Rician noise sigma relative to the modality's WM intensity.
        misregistration_mm: largest shift of a modality against the reference, per axis.
        reference_modality: the modality the label and the others are registered to.
        vessel_strength: range of the T1ce enhancement of vessels in CSF spaces, relative to
            white matter ((0, 0) disables them).
        vessel_spacing_mm: feature size of the random fields whose common zeros are the vessels.
        vessel_width: vessel thickness, as a fraction of the fields' standard deviation.
        multifocal_prob: probability of a multi-focal case (0 = off, the default: cases are
            those of earlier revisions, seed for seed): 2-3 separate tumours (as ``p_multifocal``)
            plus satellite nodules (:mod:`cascadeseg.data.synth_satellites`), for lesion-wise
            evaluation and post-processing. Drawn from a stream of its own.
        max_lesions: most tumour foci of a multi-focal case (separate tumours + satellites,
            >= 2); a multi-focal case gets between 1 and ``max_lesions - tumours`` satellites.
        satellite_radius_mm: range of a satellite's core radius (at least one voxel).
        satellite_near_gap_voxels: gap range (voxels) of ``near`` satellites: within the BraTS
            2023 ranking code's 3-voxel dilation reach.
        satellite_far_gap_voxels: gap range (voxels) of ``far`` satellites: out of that reach.
        p_near_satellite: probability that a satellite is ``near`` (else ``far``).
        p_satellite_in_edema: probability that a satellite lies in the edema of the tumour (a
            lesion of its own in TC/ET only; else outside the whole tumour).
    """

    shape_scale: float = 1.0
    brain_scale: tuple[float, float] = (0.86, 0.96)
    brain_scale_jitter: float = 0.03
    wiggle_mm: float = 2.0
    translation_mm: float = 5.0
    mirror_probability: float = 0.5
    p_no_et: float = 0.15
    p_tiny: float = 0.08
    p_multifocal: float = 0.12
    core_radius_mm: tuple[float, float] = (7.0, 22.0)
    tiny_core_radius_mm: tuple[float, float] = (2.5, 4.5)
    satellite_scale: tuple[float, float] = (0.35, 0.7)
    satellite_distance_mm: tuple[float, float] = (25.0, 55.0)
    axis_ratio: tuple[float, float] = (0.75, 1.3)
    edema_ratio: tuple[float, float] = (1.3, 2.2)
    necrosis_ratio: tuple[float, float] = (0.3, 0.8)
    p_solid: float = 0.2
    min_necrotic_core_mm: float = 6.0
    core_irregularity: tuple[float, float] = (0.08, 0.25)
    edema_irregularity: tuple[float, float] = (0.1, 0.3)
    edema_wm_affinity: float = 0.5
    edema_min_margin_mm: float = 2.0
    edge_mm: float = 1.5
    edema_edge_mm: float = 4.0
    edema_fade: float = 0.65
    mass_effect: tuple[float, float] = (0.15, 0.5)
    mass_effect_support: float = 2.5
    min_depth_mm: float = 4.0
    wm_centre_probability: float = 0.85
    et_enhancement: tuple[float, float] = (1.3, 1.9)
    contrast_jitter: float = 0.04
    tumour_jitter: float = 0.08
    tumour_texture: float = 0.08
    tumour_texture_mm: float = 4.0
    intensity_scale: tuple[float, float] = (400.0, 2500.0)
    bias_strength: tuple[float, float] = (0.02, 0.1)
    bias_spacing_mm: float = 60.0
    noise_level: tuple[float, float] = (0.015, 0.035)
    misregistration_mm: float = 1.0
    vessel_strength: tuple[float, float] = (0.5, 1.2)
    vessel_spacing_mm: float = 14.0
    vessel_width: float = 0.15
    reference_modality: str = "t1ce"
    multifocal_prob: float = 0.0
    max_lesions: int = 6
    satellite_radius_mm: tuple[float, float] = (2.0, 5.0)
    satellite_near_gap_voxels: tuple[int, int] = (1, 3)
    satellite_far_gap_voxels: tuple[int, int] = (10, 20)
    p_near_satellite: float = 0.5
    p_satellite_in_edema: float = 0.5

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape of the output grid (voxels)."""
        return tuple(max(8, round(s * self.shape_scale)) for s in BRATS_SHAPE)  # type: ignore[return-value]

    @property
    def voxel_mm(self) -> float:
        """Voxel size of the output grid (mm)."""
        return 1.0 / self.shape_scale


@dataclass(frozen=True)
class Lesion:
    """One planned lesion (voxel units of the output grid unless stated)."""

    centre: np.ndarray  # (3,) voxel coordinates in the brain bounding box
    core_radius_mm: float
    has_et: bool


@dataclass(frozen=True)
class CasePlan:
    """The discrete choices of a case (recorded in ``Meta.extra["synth"]``)."""

    has_et: bool
    tiny: bool
    n_lesions: int
    mirrored: bool = False
    lesions: list[Lesion] = field(default_factory=list)
    n_satellites: int = 0


# --------------------------------------------------------------------------------------------
# Templates


@dataclass(frozen=True)
class _Anatomy:
    """Tissue maps in MNI voxel order (RAS), resampled to the output voxel size.

    ``maps``: float32 ``(3, X, Y, Z)`` = brain (0/1), CSF fraction, WM fraction (GM = brain -
    CSF - WM). ``lo``/``hi``: brain bounding box (voxels). ``mni_origin``: MNI mm of voxel 0;
    ``voxel_mm``: voxel size. ``candidates``: ``(N, 3)`` voxel coordinates of possible lesion
    centres (cerebrum), with their depth in mm and whether they lie in WM.
    """

    maps: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    mni_origin: np.ndarray
    voxel_mm: float
    candidates: np.ndarray
    depth_mm: np.ndarray
    in_wm: np.ndarray


@lru_cache(maxsize=1)
def _load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Brain mask, GM and WM probability maps of MNI152 at 1 mm, and the affine (loaded once)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets

        mask_img = datasets.load_mni152_brain_mask(resolution=1)
        gm_img = datasets.load_mni152_gm_template(resolution=1)
        wm_img = datasets.load_mni152_wm_template(resolution=1)
    mask = np.asarray(mask_img.dataobj) > 0
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(wm_img.dataobj, dtype=np.float32)
    return mask, gm, wm, np.asarray(mask_img.affine, dtype=np.float64)


@lru_cache(maxsize=4)
def _anatomy(shape_scale: float) -> _Anatomy:
    """Tissue maps at voxel size ``1 / shape_scale`` mm, cached per process."""
    mask, gm, wm, affine = _load_mni152()
    gm = np.where(mask, gm, 0.0).astype(np.float32)
    wm = np.where(mask, wm, 0.0).astype(np.float32)
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.where(mask, 1.0 - gm - wm, 0.0).astype(np.float32)
    maps = np.stack([mask.astype(np.float32), csf, wm])
    mni_origin = affine[:3, 3].copy()
    voxel_mm = 1.0
    if shape_scale != 1.0:
        # Anti-alias before subsampling, then resample to the coarser voxel size.
        sigma = (0.0, *([0.4 / shape_scale] * 3))
        maps = ndimage.gaussian_filter(maps, sigma=sigma)
        maps = ndimage.zoom(
            maps, (1.0, *([shape_scale] * 3)), order=1, grid_mode=True, mode="grid-constant"
        )
        maps = maps.astype(np.float32)
        voxel_mm = 1.0 / shape_scale
        mni_origin = mni_origin + 0.5 * (voxel_mm - 1.0)
    # Crop to the brain's box plus one voxel: every later warp reads only this.
    idx = np.nonzero(maps[0] >= 0.5)
    start = np.array([max(int(i.min()) - 1, 0) for i in idx])
    stop = np.array([min(int(i.max()) + 2, n) for i, n in zip(idx, maps.shape[1:])])
    maps = maps[:, start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
    mni_origin = mni_origin + start * voxel_mm
    brain = maps[0] >= 0.5
    idx = np.nonzero(brain)
    lo = np.array([i.min() for i in idx])
    hi = np.array([i.max() for i in idx])

    # Candidate lesion centres on a ~4 mm lattice: cerebrum only (no cerebellum or brainstem,
    # where adult gliomas are rare), in WM or GM, with their depth below the brain surface.
    stride = max(1, round(4.0 / voxel_mm))
    sub = brain[::stride, ::stride, ::stride]
    depth = ndimage.distance_transform_edt(sub) * stride * voxel_mm
    grid = np.stack(np.nonzero(sub), axis=1) * stride
    mni = grid * voxel_mm + mni_origin
    x, y, z = mni[:, 0], mni[:, 1], mni[:, 2]
    posterior_fossa = (z < -8) & (y < -38)
    brainstem = (z < 2) & (np.abs(x) < 18) & (y < 0) & (y > -45)
    keep = ~(posterior_fossa | brainstem)
    wm_at = maps[2][tuple(grid.T)]
    gm_at = maps[0][tuple(grid.T)] - maps[1][tuple(grid.T)] - wm_at
    keep &= (wm_at >= 0.5) | (gm_at >= 0.5)
    d = depth[tuple((grid // stride).T)]
    return _Anatomy(
        maps=np.ascontiguousarray(maps),
        lo=lo,
        hi=hi,
        mni_origin=mni_origin,
        voxel_mm=voxel_mm,
        candidates=grid[keep].astype(np.float64),
        depth_mm=d[keep],
        in_wm=wm_at[keep] >= 0.5,
    )


# --------------------------------------------------------------------------------------------
# Pure helpers


def bspline_matrix(n_fine: int, n_coarse: int) -> np.ndarray:
    """Cubic B-spline upsampling matrix ``(n_fine, n_coarse)`` (float32).

    Row ``i`` holds the weights of the ``n_coarse`` control points at fine sample ``i``; the fine
    samples span the valid range of the spline (``n_coarse >= 4``). Rows sum to 1.
    """
    if n_coarse < 4:
        raise ValueError("a cubic B-spline needs at least 4 control points")
    t = np.linspace(0.0, n_coarse - 3.0, n_fine, endpoint=False) + 0.5 * (n_coarse - 3.0) / n_fine
    base = np.minimum(np.floor(t).astype(np.int64), n_coarse - 4)
    u = t - base
    weights = np.stack(
        [
            (1 - u) ** 3 / 6,
            (3 * u**3 - 6 * u**2 + 4) / 6,
            (-3 * u**3 + 3 * u**2 + 3 * u + 1) / 6,
            u**3 / 6,
        ],
        axis=1,
    )
    matrix = np.zeros((n_fine, n_coarse), dtype=np.float32)
    rows = np.arange(n_fine)
    for k in range(4):
        matrix[rows, base + k] = weights[:, k]
    return matrix


def upsample_coarse(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Smooth upsampling of a coarse 3D grid of control points to ``shape`` (cubic B-spline).

    Args:
        coarse: ``(C, a, b, c)`` or ``(a, b, c)`` control points (each side >= 4).
        shape: fine spatial shape ``(X, Y, Z)``.

    Returns:
        float32 ``(C, X, Y, Z)`` (or ``(X, Y, Z)``): a C2-smooth field, three matrix products.
    """
    squeeze = coarse.ndim == 3
    grid = (coarse[None] if squeeze else coarse).astype(np.float32)
    mx, my, mz = (bspline_matrix(n, m) for n, m in zip(shape, grid.shape[1:]))
    nx, ny, nz = shape
    out = np.empty((grid.shape[0], nx, ny, nz), dtype=np.float32)
    for c in range(grid.shape[0]):
        # Small (a, Y, Z) first, then one BLAS product writes the big array contiguously.
        small = np.einsum("yb,abc,zc->ayz", my, grid[c], mz, optimize=True)
        np.matmul(mx, small.reshape(small.shape[0], -1), out=out[c].reshape(nx, ny * nz))
    return out[0] if squeeze else out


def smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], spacing: float, channels: int = 0
) -> np.ndarray:
    """Smooth random field with unit standard deviation (about) and feature size ``spacing``.

    Args:
        rng: random generator.
        shape: spatial shape (voxels).
        spacing: distance between control points (voxels); larger is smoother.
        channels: 0 for one ``shape`` field, else ``(channels, *shape)`` independent fields.
    """
    coarse_shape = [max(4, math.ceil(n / max(spacing, 1e-3)) + 3) for n in shape]
    n = max(channels, 1)
    coarse = rng.standard_normal((n, *coarse_shape)).astype(np.float32)
    # A cubic B-spline of iid unit control points has std sqrt(sum w^2) = 0.68..0.71 per axis
    # (measured 0.33 in 3D); dividing by 0.33 gives a field of about unit std everywhere.
    field_ = upsample_coarse(coarse, shape) / np.float32(0.33)
    return field_ if channels else field_[0]


def axis_lerp(array: np.ndarray, axis: int, source: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``array`` along one ``axis`` at fractional ``source`` indices.

    Samples outside ``[0, n - 1]`` read zeros (like ``map_coordinates`` with ``cval=0``).

    Args:
        array: any float32 array.
        axis: the axis to resample.
        source: ``(m,)`` source coordinates (voxels) of the ``m`` output samples.

    Returns:
        float32 array with ``array.shape[axis]`` replaced by ``m``.
    """
    n = array.shape[axis]
    base = np.floor(source).astype(np.int64)
    frac = (source - base).astype(np.float32)
    w0 = np.where((base >= 0) & (base < n), 1.0 - frac, 0.0).astype(np.float32)
    w1 = np.where((base + 1 >= 0) & (base + 1 < n), frac, 0.0).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = -1
    a0 = np.take(array, np.clip(base, 0, n - 1), axis=axis)
    a0 *= w0.reshape(shape)
    a1 = np.take(array, np.clip(base + 1, 0, n - 1), axis=axis)
    a1 *= w1.reshape(shape)
    a0 += a1
    return a0


def subvoxel_shift(volume: np.ndarray, shift: Sequence[float]) -> np.ndarray:
    """Shift a 3D volume by ``shift`` voxels per axis with trilinear interpolation (zeros enter).

    ``out[x] = volume[x - shift]``, done as three 1D linear interpolations (separable trilinear)
    with slices rather than gathers (measured ~2x faster than ``scipy.ndimage.shift``).
    """
    out = np.asarray(volume, dtype=np.float32)
    for axis, s in enumerate(shift):
        if s == 0:
            continue
        whole = math.floor(s)
        frac = np.float32(s - whole)
        # out[x] = (1 - frac) * v[x - whole] + frac * v[x - whole - 1]
        moved = np.zeros_like(out)
        for k, weight in ((whole, 1.0 - frac), (whole + 1, frac)):
            n = out.shape[axis]
            if weight == 0 or abs(k) >= n:
                continue
            dst = [slice(None)] * out.ndim
            src = [slice(None)] * out.ndim
            dst[axis] = slice(max(k, 0), n + min(k, 0))
            src[axis] = slice(max(-k, 0), n - max(k, 0))
            target = moved[tuple(dst)]
            target += np.float32(weight) * out[tuple(src)]
        out = moved
    return out


def smoothstep_ramp(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction: 0.5 at distance 0, linear over ``width`` (inside positive)."""
    out = np.asarray(signed_distance, dtype=np.float32) * np.float32(1.0 / max(width, 1e-6))
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def radial_mass_effect_scale(radius: np.ndarray, strength: float, support: float) -> np.ndarray:
    """Scale ``s(r)`` of the radial mass-effect map ``x_src = c + (x - c) * s(r)``.

    ``s(r) = 1 - strength * (1 - (r / support)^2)^2`` inside ``support``, 1 outside. The radial map
    ``f(r) = r s(r)`` has ``f' = s + r s' >= s > 0`` (``s' >= 0``), so it is monotonic: tissue is
    stretched near the centre (where the tumour grows) and compressed in the shell around it,
    and the warp never folds.
    """
    q = np.clip(1.0 - (radius / support) ** 2, 0.0, None)
    return (1.0 - strength * q * q).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Steps


def plan_case(seed: int, config: SynthConfig = SynthConfig()) -> CasePlan:
    """The discrete choices of case ``seed`` (no ET, tiny, number of lesions) without the images.

    Uses the same first draws as :func:`synthesize_case`, so a test or a study can pick seeds
    with a given kind of hard case cheaply.
    """
    rng = np.random.default_rng(seed)
    return _multifocal_plan(seed, config, _draw_plan(rng, config))[0]


def _draw_plan(rng: np.random.Generator, config: SynthConfig) -> CasePlan:
    draws = rng.random(4)
    has_et = bool(draws[0] >= config.p_no_et)
    tiny = bool(draws[1] < config.p_tiny)
    n_lesions = 1
    if draws[2] < config.p_multifocal:
        n_lesions = 2 if draws[3] < 0.7 else 3
    return CasePlan(has_et=has_et, tiny=tiny, n_lesions=n_lesions)


def _multifocal_plan(
    seed: int, config: SynthConfig, plan: CasePlan
) -> tuple[CasePlan, np.random.Generator | None]:
    """The plan with ``config.multifocal_prob`` applied, and the satellites' generator.

    The draws come from a stream of their own (``default_rng([seed, 17])``), so with
    ``multifocal_prob = 0`` nothing is drawn and every case is the same as without the option.
    """
    if config.multifocal_prob <= 0:
        return plan, None
    rng = np.random.default_rng([seed, 17])
    if rng.random() >= config.multifocal_prob:
        return plan, rng
    n_tumours = plan.n_lesions if plan.n_lesions > 1 else (2 if rng.random() < 0.7 else 3)
    n_tumours = max(1, min(n_tumours, config.max_lesions - 1))
    n_satellites = int(rng.integers(1, config.max_lesions - n_tumours + 1))
    plan = CasePlan(plan.has_et, plan.tiny, n_tumours, plan.mirrored, n_satellites=n_satellites)
    return plan, rng


def _axis_source(
    rng: np.random.Generator,
    config: SynthConfig,
    anatomy: _Anatomy,
    shape: tuple[int, int, int],
    mirror: bool,
) -> list[np.ndarray]:
    """Per output axis, the source (template voxel) coordinate of every output index."""
    vox = anatomy.voxel_mm
    iso = rng.uniform(*config.brain_scale)
    jitter = rng.uniform(-config.brain_scale_jitter, config.brain_scale_jitter, size=3)
    shift = rng.uniform(-config.translation_mm, config.translation_mm, size=3) / vox
    src_centre = 0.5 * (anatomy.lo + anatomy.hi)
    # BraTS files are LPS-like (affine diag(-1, -1, 1)); MNI arrays are RAS: flip x and y.
    # A mirrored case flips x back (left-right mirror image of the anatomy).
    flips = (1.0 if mirror else -1.0, -1.0, 1.0)
    sources = []
    for axis in range(3):
        n = shape[axis]
        out_centre = BRATS_BRAIN_CENTRE[axis] * config.shape_scale + shift[axis]
        scale = iso * (1.0 + jitter[axis])
        i = np.arange(n, dtype=np.float64)
        wiggle = np.zeros(n)
        if config.wiggle_mm > 0:
            coarse = rng.standard_normal(6)
            wiggle = (bspline_matrix(n, 6) @ coarse) * (config.wiggle_mm / vox)
        sources.append(src_centre[axis] + flips[axis] * (i - out_centre) / scale + wiggle)
    return sources


def _place_lesions(
    rng: np.random.Generator,
    config: SynthConfig,
    plan: CasePlan,
    anatomy: _Anatomy,
    sources: list[np.ndarray],
    box_lo: np.ndarray,
) -> list[Lesion]:
    """Choose lesion sizes and centres (voxel coordinates in the brain box)."""
    vox = anatomy.voxel_mm
    low, high = config.tiny_core_radius_mm if plan.tiny else config.core_radius_mm
    # Log-uniform radius: small and large tumours both common, as in BraTS.
    main_radius = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    radii = [main_radius]
    for _ in range(plan.n_lesions - 1):
        radii.append(max(low, main_radius * rng.uniform(*config.satellite_scale)))

    def to_output(points: np.ndarray) -> np.ndarray:
        # Invert the monotonic per-axis source maps (np.interp needs increasing x).
        out = np.empty_like(points)
        for axis in range(3):
            src = sources[axis]
            idx = np.arange(src.size, dtype=np.float64)
            if src[-1] < src[0]:
                out[:, axis] = np.interp(points[:, axis], src[::-1], idx[::-1])
            else:
                out[:, axis] = np.interp(points[:, axis], src, idx)
        return out - box_lo

    positions = to_output(anatomy.candidates)
    lesions: list[Lesion] = []
    # Template mm per output mm (the anatomy was scaled down into the grid).
    scale_mm = float(np.mean(np.abs(np.diff(sources[0]))))
    for k, radius in enumerate(radii):
        # The core's farthest extent is radius * max axis ratio * (1 + irregularity).
        reach = radius * config.axis_ratio[1] * (1 + config.core_irregularity[1])
        need = (reach + config.min_depth_mm) * scale_mm
        ok = anatomy.depth_mm >= need
        in_wm = rng.random() < config.wm_centre_probability
        ok_tissue = ok & (anatomy.in_wm if in_wm else ~anatomy.in_wm)
        if ok_tissue.any():
            ok = ok_tissue
        if k > 0:
            # Separate cores: farther apart than the two cores' reaches (plus a gap), so a
            # multifocal case really has several tumour cores.
            dist = np.linalg.norm(positions - lesions[0].centre, axis=1) * vox
            first_reach = lesions[0].core_radius_mm * config.axis_ratio[1]
            first_reach *= 1 + config.core_irregularity[1]
            nearest = max(config.satellite_distance_mm[0], first_reach + reach + 4.0)
            farthest = max(config.satellite_distance_mm[1], nearest + 10.0)
            ok = ok & (dist >= nearest) & (dist <= farthest)
        if not ok.any():
            if k > 0:
                break  # no room for another lesion: fewer lesions
            ok = anatomy.depth_mm >= anatomy.depth_mm.max() * 0.8
            radius = min(radius, max(anatomy.depth_mm.max() / scale_mm - config.min_depth_mm, low))
        choice = rng.choice(np.flatnonzero(ok))
        centre = positions[choice] + rng.uniform(-1.5, 1.5, size=3) / vox
        lesions.append(Lesion(centre=centre, core_radius_mm=radius, has_et=plan.has_et))
    return lesions


def _box(centre: np.ndarray, half: float, shape: Sequence[int]) -> tuple[slice, ...]:
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, np.array(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _apply_mass_effect(
    tissue: np.ndarray, lesion: Lesion, strength: float, config: SynthConfig, vox: float
) -> None:
    """Push the CSF/WM maps ``tissue (2, X, Y, Z)`` away from the lesion centre (in place)."""
    support = config.mass_effect_support * lesion.core_radius_mm / vox
    if strength <= 0 or support < 2:
        return
    box = _box(lesion.centre, support, tissue.shape[1:])
    offset = np.array([s.start for s in box], dtype=np.float32)
    shape = [s.stop - s.start for s in box]
    if min(shape) < 2:
        return
    rel = np.meshgrid(
        *[np.arange(n, dtype=np.float32) + o - c for n, o, c in zip(shape, offset, lesion.centre)],
        indexing="ij",
        sparse=True,
    )
    radius = np.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2)
    scale = radial_mass_effect_scale(radius, strength, support)
    # Sample the whole volume (not the box) so that tissue outside the box can move in.
    centre = lesion.centre.astype(np.float32)
    coords = np.stack(np.broadcast_arrays(*[centre[a] + rel[a] * scale for a in range(3)]))
    for c in range(tissue.shape[0]):
        tissue[c][box] = ndimage.map_coordinates(
            tissue[c], coords, order=1, mode="nearest", prefilter=False, output=np.float32
        )


@dataclass
class _TumourMaps:
    """Soft tumour maps over one box (float32, same shape): edema weight, core and necrosis
    fractions, enhancing-rim flag; and the box itself."""

    box: tuple[slice, ...]
    edema: np.ndarray
    core: np.ndarray
    necrosis: np.ndarray
    enhancing: np.ndarray


def _lesion_fields(
    rng: np.random.Generator,
    lesion: Lesion,
    config: SynthConfig,
    csf: np.ndarray,
    wm: np.ndarray,
    box: tuple[slice, ...],
    vox: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Soft maps of one lesion over ``box`` (float32 each): edema label ramp, edema image
    weight, core fraction, necrosis fraction."""
    shape = tuple(s.stop - s.start for s in box)
    offset = np.array([s.start for s in box], dtype=np.float32)
    # Uniform random rotation from a normalised Gaussian quaternion (same across scipy versions).
    quaternion = rng.standard_normal(4)
    rotation = Rotation.from_quat(quaternion / np.linalg.norm(quaternion)).as_matrix()
    rotation = rotation.astype(np.float32)
    axes = rng.uniform(*config.axis_ratio, size=3).astype(np.float32)
    axes /= np.cbrt(np.prod(axes))  # keep the mean radius
    radius = lesion.core_radius_mm / vox  # voxels
    rel = np.meshgrid(
        *[np.arange(n, dtype=np.float32) + o - c for n, o, c in zip(shape, offset, lesion.centre)],
        indexing="ij",
        sparse=True,
    )
    # Normalised ellipsoid radius: 1 on the ellipsoid surface of the core.
    rho_sq = np.zeros(shape, dtype=np.float32)
    for k in range(3):
        local = rotation[0, k] * rel[0] + rotation[1, k] * rel[1] + rotation[2, k] * rel[2]
        rho_sq += (local / (axes[k] * radius)) ** 2
    rho = np.sqrt(rho_sq)

    # Lobulated core: smooth radial deformation with features of about half the radius.
    lobes = smooth_noise(rng, shape, spacing=max(radius * 0.6, 2.0))
    irregular = rng.uniform(*config.core_irregularity)
    # The surface sits at radius R (1 + a n(x)); the factor is kept >= 0.5 so that a deep
    # trough cannot collapse the radius.
    rho_core = rho / np.maximum(1.0 + np.float32(irregular) * lobes, np.float32(0.5))
    core = smoothstep_ramp((1.0 - rho_core) * radius, config.edge_mm / vox)

    necrosis_ratio = rng.uniform(*config.necrosis_ratio)
    solid = rng.random() < config.p_solid
    if solid or lesion.core_radius_mm < config.min_necrotic_core_mm:
        necrosis_ratio = 0.0  # too small to see: solid lesion
    necrosis = np.zeros(shape, dtype=np.float32)
    if necrosis_ratio > 0:
        wobble = smooth_noise(rng, shape, spacing=max(radius * 0.5, 2.0))
        rho_nec = rho_core / np.maximum(1.0 + np.float32(0.12) * wobble, np.float32(0.5))
        necrosis = smoothstep_ramp((necrosis_ratio - rho_nec) * radius, config.edge_mm / vox)

    # Edema: a larger deformed ellipsoid, extended along white matter, sparing the ventricles.
    edema_radius = radius * rng.uniform(*config.edema_ratio)
    patchy = smooth_noise(rng, shape, spacing=max(8.0 / vox, 2.0))
    rho_ed = rho * np.float32(radius / edema_radius)
    rho_ed /= np.maximum(
        1.0 + np.float32(rng.uniform(*config.edema_irregularity)) * patchy, np.float32(0.5)
    )
    rho_ed -= np.float32(config.edema_wm_affinity) * (wm[box] - 0.5)
    edema = smoothstep_ramp((1.0 - rho_ed) * edema_radius, config.edema_edge_mm / vox)
    edema *= 1.0 - csf[box]  # fluid spaces do not swell
    # Vasogenic edema is densest next to the tumour and fades outwards: the image uses the
    # label's ramp times a strength that falls from 1 (near the core) to edema_fade at the border.
    strength = np.clip((1.0 - rho_ed) * 2.0, 0.0, 1.0)
    strength *= np.float32(1.0 - config.edema_fade)
    strength += np.float32(config.edema_fade)
    strength *= edema
    return edema, strength, core, necrosis


def _vessel_map(
    rng: np.random.Generator, config: SynthConfig, csf: np.ndarray, vox: float
) -> np.ndarray | None:
    """Tubular enhancement in CSF spaces (relative to WM on T1ce), or ``None`` when disabled.

    Tubes are where two independent smooth fields are both near zero (the intersection of two
    random level sets is a set of curves), weighted by the CSF fraction so they run in the sulci
    and cisterns like cortical veins and arteries.
    """
    strength = rng.uniform(*config.vessel_strength)
    if strength <= 0:
        return None
    fields = smooth_noise(rng, csf.shape, spacing=config.vessel_spacing_mm / vox, channels=2)
    width = np.float32(config.vessel_width)
    fields *= fields
    tubes = fields[0]
    tubes += fields[1]
    tubes *= np.float32(-0.5) / (width * width)
    np.exp(tubes, out=tubes)
    tubes *= csf
    tubes *= np.float32(strength)
    return tubes


# --------------------------------------------------------------------------------------------
# The case


def synthesize_case(
    seed: int,
    *,
    case_id: str,
    config: SynthConfig = SynthConfig(),
    label_convention: str = "brats2021",
) -> Case:
    """One synthetic BraTS-like case on MNI152 anatomy, deterministic for ``seed``.

    Args:
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same arrays.
        case_id: identifier written into ``meta.case_id``.
        config: generator knobs (:class:`SynthConfig`); the default is full BraTS geometry.
        label_convention: the label convention of the files the case will be written in
            (``meta.label_convention``; the label array itself is always internal).

    Returns:
        A :class:`Case`: image float32 ``(4, X, Y, Z)`` (FLAIR, T1, T1ce, T2; integral values in
        ``[1, 32767]`` inside the brain, exactly 0 outside), label uint8 ``(X, Y, Z)`` internal
        (0 background, 1 NCR, 2 ED, 3 ET), meta with the BraTS affine (``diag(-1, -1, 1)`` times
        the voxel size, origin ``(0, Y-1, 0)``), ``source_layout="synthetic"`` and the plan in
        ``meta.extra["synth"]``. ``(X, Y, Z) = (240, 240, 155)`` at ``shape_scale=1``.
    """
    rng = np.random.default_rng(seed)
    plan, satellite_rng = _multifocal_plan(seed, config, _draw_plan(rng, config))
    anatomy = _anatomy(float(config.shape_scale))
    vox = anatomy.voxel_mm
    shape = config.shape

    # 1. Anatomy: separable warp of the template into the output grid, on the brain's box only.
    mirrored = bool(rng.random() < config.mirror_probability)
    sources = _axis_source(rng, config, anatomy, shape, mirrored)
    box_lo, box_hi = [], []
    for axis in range(3):
        inside = np.flatnonzero(
            (sources[axis] >= anatomy.lo[axis] - 1) & (sources[axis] <= anatomy.hi[axis] + 1)
        )
        box_lo.append(int(inside[0]))
        box_hi.append(int(inside[-1]) + 1)
    brain_box = tuple(slice(a, b) for a, b in zip(box_lo, box_hi))
    maps = anatomy.maps
    for axis in range(3):
        maps = axis_lerp(maps, axis + 1, sources[axis][brain_box[axis]])
    brain = maps[0] >= 0.5
    tissue = maps[1:]  # CSF, WM fractions; GM = 1 - CSF - WM inside the brain

    # 2-3. Lesions and mass effect (the brain outline stays: the skull does not move).
    lesions = _place_lesions(rng, config, plan, anatomy, sources, np.array(box_lo, dtype=float))
    plan = CasePlan(plan.has_et, plan.tiny, len(lesions), mirrored, lesions, plan.n_satellites)
    for lesion in lesions:
        low, high = config.mass_effect
        strength = rng.uniform(low, high) * (0.3 if plan.tiny else 1.0)
        _apply_mass_effect(tissue, lesion, strength, config, vox)
    csf, wm = tissue
    np.clip(csf, 0.0, 1.0, out=csf)
    np.clip(wm, 0.0, 1.0, out=wm)
    csf *= brain
    wm *= brain

    # 4. Tumour maps on the union of the lesions' boxes.
    box_shape = brain.shape
    ring_iterations = max(1, round(config.edema_min_margin_mm / vox))
    reach = []
    for lesion in lesions:
        r = lesion.core_radius_mm / vox
        edema_reach = (
            r
            * config.axis_ratio[1]
            * config.edema_ratio[1]
            * (1 + config.edema_irregularity[1] * 2.5 + config.edema_wm_affinity)
        )
        reach.append(edema_reach + 2 * config.edema_edge_mm / vox + 2)
    if plan.n_satellites:
        margin = satellite_margin_voxels(config, vox, ring_iterations)
        reach = [h + margin for h in reach]
    lo = np.min([np.maximum(les.centre - h, 0) for les, h in zip(lesions, reach)], axis=0)
    hi = np.max(
        [np.minimum(les.centre + h + 1, box_shape) for les, h in zip(lesions, reach)], axis=0
    )
    tbox = tuple(slice(int(a), int(b)) for a, b in zip(np.floor(lo), np.ceil(hi)))
    tshape = tuple(s.stop - s.start for s in tbox)
    edema = np.zeros(tshape, dtype=np.float32)  # label ramp
    edema_signal = np.zeros(tshape, dtype=np.float32)  # image weight
    core = np.zeros(tshape, dtype=np.float32)
    necrosis = np.zeros(tshape, dtype=np.float32)
    enhancing = np.zeros(tshape, dtype=np.float32)
    for lesion, h in zip(lesions, reach):
        lbox = _box(lesion.centre, h, box_shape)
        local = tuple(slice(a.start - t.start, a.stop - t.start) for a, t in zip(lbox, tbox))
        e, es, c, n = _lesion_fields(rng, lesion, config, csf, wm, lbox, vox)
        np.maximum(edema[local], e, out=edema[local])
        np.maximum(edema_signal[local], es, out=edema_signal[local])
        wins = c > core[local]
        core[local] = np.where(wins, c, core[local])
        necrosis[local] = np.where(wins, n, necrosis[local])
        enhancing[local] = np.where(wins, np.float32(lesion.has_et), enhancing[local])
    tbrain = brain[tbox]
    core *= tbrain
    satellites: list[dict[str, Any]] = []
    if plan.n_satellites and satellite_rng is not None:
        base_core, base_ed, _ = _core_and_edema(core, edema, tbrain, ring_iterations)
        soft = SoftMaps(core, necrosis, enhancing, edema_signal)
        satellites = add_satellites(
            satellite_rng,
            plan.n_satellites,
            soft,
            base_wt=base_core | base_ed,
            base_tc=base_core,
            inside=tbrain,
            has_et=plan.has_et,
            config=config,
            voxel_mm=vox,
            ring_iterations=ring_iterations,
        )
        for record in satellites:
            offset = [t.start + b.start for t, b in zip(tbox, brain_box)]
            record["centre_voxel"] = [c + o for c, o in zip(record["centre_voxel"], offset)]
    is_core, is_ed, ring = _core_and_edema(core, edema, tbrain, ring_iterations)
    edema_signal[ring] = np.maximum(edema_signal[ring], 0.6)
    edema_signal *= tbrain
    is_ncr = is_core & ((necrosis >= 0.5) | (enhancing < 0.5))
    is_et = is_core & ~is_ncr

    label = np.zeros(box_shape, dtype=np.uint8)
    tlabel = label[tbox]
    tlabel[is_ed] = ED
    tlabel[is_ncr] = NCR
    tlabel[is_et] = ET

    # 5. Image formation: linear mix of compartments, bias, misregistration, noise, int16.
    values = TISSUE_INTENSITY.copy()
    values[:, :3] *= rng.uniform(1 - config.contrast_jitter, 1 + config.contrast_jitter, (4, 3))
    values[:, 3:] *= rng.uniform(1 - config.tumour_jitter, 1 + config.tumour_jitter, (4, 4))
    t1ce = MODALITIES.index("t1ce")
    values[t1ce, _ENHANCING] = values[t1ce, _WM] * rng.uniform(*config.et_enhancement)
    gains = rng.uniform(*config.intensity_scale, size=4).astype(np.float32)
    bias_std = rng.uniform(*config.bias_strength, size=4).astype(np.float32)
    bias = smooth_noise(rng, box_shape, spacing=config.bias_spacing_mm / vox, channels=4)
    texture = smooth_noise(rng, tshape, spacing=config.tumour_texture_mm / vox, channels=2)
    texture *= np.float32(config.tumour_texture)
    texture += 1.0
    reference = MODALITIES.index(config.reference_modality)
    shifts = rng.uniform(-config.misregistration_mm, config.misregistration_mm, (4, 3)) / vox
    shifts[reference] = 0.0
    noise_level = rng.uniform(*config.noise_level, size=4).astype(np.float32)
    vessels = _vessel_map(rng, config, csf, vox)

    brain_f = brain.astype(np.float32)
    brain_idx = np.flatnonzero(brain)
    full = np.zeros((4, *shape), dtype=np.float32)
    tmp = np.empty(box_shape, dtype=np.float32)
    not_core = 1.0 - core
    for m in range(4):
        v = values[m].astype(np.float32)
        # Healthy tissue, with GM = brain - CSF - WM: v_gm * brain + (v_csf - v_gm) * CSF + ...
        img = np.multiply(brain_f, v[_GM])
        img += np.multiply(csf, v[_CSF] - v[_GM], out=tmp)
        img += np.multiply(wm, v[_WM] - v[_GM], out=tmp)
        # Tumour box: edema mixed into the tissue, then the core over it (partial volumes).
        healthy = img[tbox]
        rim = enhancing * (v[_ENHANCING] - v[_NONENHANCING]) + v[_NONENHANCING]
        core_value = (rim * (1.0 - necrosis) + v[_NECROSIS] * necrosis) * texture[0]
        with_edema = healthy * (1.0 - edema_signal) + (v[_EDEMA] * texture[1]) * edema_signal
        healthy[...] = with_edema * not_core + core_value * core
        if m == t1ce and vessels is not None:
            # Enhancing vessels in the sulci and cisterns: bright on T1ce but not tumour, the
            # classic false positive of enhancing-tumour segmentation.
            img += np.multiply(vessels, v[_WM], out=tmp)
        # Smooth multiplicative bias field and the scanner gain.
        bias_m = bias[m]
        bias_m *= bias_std[m]
        np.exp(bias_m, out=bias_m)
        bias_m *= gains[m]
        img *= bias_m
        if np.any(shifts[m]):
            img = subvoxel_shift(img, shifts[m])
        # Rician noise on brain voxels: magnitude of a complex signal with Gaussian noise.
        sigma = noise_level[m] * gains[m] * v[_WM]
        signal = img.ravel()[brain_idx]
        signal += sigma * rng.standard_normal(signal.size, dtype=np.float32)
        imag = rng.standard_normal(signal.size, dtype=np.float32)
        imag *= sigma
        signal *= signal
        imag *= imag
        signal += imag
        np.sqrt(signal, out=signal)
        np.rint(signal, out=signal)
        np.clip(signal, 1.0, float(np.iinfo(np.int16).max), out=signal)
        tmp.fill(0.0)
        tmp.ravel()[brain_idx] = signal
        full[m][brain_box] = tmp

    full_label = np.zeros(shape, dtype=np.uint8)
    full_label[brain_box] = label
    spacing = (vox, vox, vox)
    meta = Meta(
        case_id=case_id,
        affine=brats_affine(shape) @ np.diag([vox, vox, vox, 1.0]),
        spacing=spacing,
        shape=shape,
        source_layout="synthetic",
        label_convention=label_convention,
        extra={"synth": _plan_record(seed, plan, brain_box, satellites, config)},
    )
    return Case(image=full, label=full_label, meta=meta)


def _core_and_edema(
    core: np.ndarray, edema: np.ndarray, brain: np.ndarray, ring_iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Core, edema and edema-ring masks (bool, the shape of the maps) of the soft maps.

    Edema always surrounds the core: a ring of ``ring_iterations`` voxels
    (``edema_min_margin_mm``) around it is edema.
    """
    is_core = core >= 0.5
    ring = ndimage.binary_dilation(is_core, iterations=ring_iterations) & brain & ~is_core
    is_ed = ~is_core & brain & ((edema >= 0.5) | ring)
    return is_core, is_ed, ring


def _plan_record(
    seed: int,
    plan: CasePlan,
    brain_box: tuple[slice, ...],
    satellites: list[dict[str, Any]],
    config: SynthConfig,
) -> dict[str, Any]:
    record = _base_plan_record(seed, plan, brain_box)
    if config.multifocal_prob > 0:  # only then, so default cases record what they always did
        record["n_satellites_planned"] = plan.n_satellites
        record["satellites"] = satellites
    return record


def _base_plan_record(seed: int, plan: CasePlan, brain_box: tuple[slice, ...]) -> dict[str, Any]:
    return {
        "seed": int(seed),
        "has_et": plan.has_et,
        "tiny": plan.tiny,
        "n_lesions": plan.n_lesions,
        "mirrored": plan.mirrored,
        "lesions": [
            {
                "centre_voxel": [float(c + s.start) for c, s in zip(les.centre, brain_box)],
                "core_radius_mm": float(les.core_radius_mm),
            }
            for les in plan.lesions
        ],
    }


# --------------------------------------------------------------------------------------------
# Datasets


def case_id_for(layout: str, index: int) -> str:
    """The case id of case ``index`` in ``layout`` (``SynthBraTS2021_00000``,
    ``BraTS-SYN-00000-000``, ``SYNTH_000``; see :data:`LAYOUT_CASE_IDS`)."""
    try:
        return LAYOUT_CASE_IDS[layout].format(index=index)
    except KeyError:
        known = ", ".join(LAYOUT_CASE_IDS)
        raise ValueError(f"unknown layout {layout!r} (known: {known})") from None


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset made with ``seed`` (independent streams; a dataset of
    n cases is the first n cases of a larger one with the same seed)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _make_and_write(
    job: tuple[int, int, str, str, Path, SynthConfig],
) -> Path:
    from cascadeseg.data.writers import write_case

    index, seed, case_id, layout, out, config = job
    case = synthesize_case(
        case_seed(seed, index),
        case_id=case_id,
        config=config,
        label_convention=LAYOUT_CONVENTIONS[layout],
    )
    return write_case(case, out, layout)


def refuse_existing(out: Path, n_cases: int, layout: str) -> None:
    """Raise :class:`InputError` if any file :func:`synthesize_dataset` would write exists."""
    from cascadeseg.data.writers import case_paths

    planned = dict.fromkeys(
        path for i in range(n_cases) for path in case_paths(case_id_for(layout, i), out, layout)
    )
    existing = [path for path in planned if path.exists() or path.is_symlink()]
    if existing:
        raise InputError(
            f"{existing[0]}: exists ({len(existing)} of the {len(planned)} files synth would "
            f"write exist); pass --overwrite to replace them, or choose another folder"
        )


def synthesize_dataset(
    out: Path,
    n_cases: int,
    *,
    seed: int,
    layout: str = "brats2021",
    workers: int = 1,
    progress: bool = True,
    config: SynthConfig = SynthConfig(),
    overwrite: bool = False,
) -> list[Path]:
    """Write ``n_cases`` synthetic cases to ``out`` in ``layout``.

    Every file to be written is checked before anything is: without ``overwrite``, an existing
    one stops the run (nothing written).

    Args:
        out: dataset folder (created).
        n_cases: number of cases (ids ``0 .. n_cases - 1`` in the layout's pattern).
        seed: dataset seed; case ``i`` uses :func:`case_seed(seed, i) <case_seed>`.
        layout: ``brats2021``, ``brats2023``, ``msd`` (or ``nnunet``).
        workers: processes; each loads the templates once.
        progress: show a tqdm progress bar.
        config: generator knobs.
        overwrite: replace files that exist.

    Returns:
        What :func:`cascadeseg.data.writers.write_case` returned per case, in case order (the
        case folders for BraTS layouts; the dataset folder for MSD).

    Raises:
        InputError: ``"<first existing file>: exists (N of the M files synth would write
            exist); pass --overwrite to replace them"`` when ``overwrite`` is False.
    """
    from tqdm import tqdm

    if layout not in LAYOUT_CASE_IDS:
        raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUT_CASE_IDS)})")
    out = Path(out)
    if not overwrite:
        refuse_existing(out, n_cases, layout)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, case_id_for(layout, i), layout, out, config) for i in range(n_cases)]
    bar = tqdm(total=n_cases, unit="case", desc="synth", disable=not progress)
    paths: list[Path] = []
    try:
        if workers <= 1 or n_cases <= 1:
            for job in jobs:
                paths.append(_make_and_write(job))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, n_cases)) as pool:
                for path in pool.map(_make_and_write, jobs):
                    paths.append(path)
                    bar.update(1)
    finally:
        bar.close()
    return paths
