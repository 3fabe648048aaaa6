"""Steps 1-3 of a synthetic case: anatomy from the MNI152 templates, lesion placement, mass effect.

The MNI152 grey-matter, white-matter and brain-mask templates (1 mm, loaded once per process)
give tissue fractions CSF / GM / WM. They are mapped into the BraTS grid by a separable warp
(scale, smooth wiggle and shift per axis, optional left-right mirror: three 1D interpolations);
lesion centres are drawn in the cerebrum; a radial displacement around each lesion pushes the
anatomy away from it (see :mod:`cascadeseg.data.synth`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from cascadeseg.data.smooth_fields import bspline_matrix
from cascadeseg.data.synth_config import BRATS_BRAIN_CENTRE, CasePlan, Lesion, SynthConfig


@dataclass(frozen=True)
class Anatomy:
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets  # optional, heavy (the templates); imported on first use

        mask_img = datasets.load_mni152_brain_mask(resolution=1)
        gm_img = datasets.load_mni152_gm_template(resolution=1)
        wm_img = datasets.load_mni152_wm_template(resolution=1)
    mask = np.asarray(mask_img.dataobj) > 0
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(wm_img.dataobj, dtype=np.float32)
    return mask, gm, wm, np.asarray(mask_img.affine, dtype=np.float64)


@lru_cache(maxsize=4)
def anatomy_at(shape_scale: float) -> Anatomy:
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
    return Anatomy(
        maps=np.ascontiguousarray(maps),
        lo=lo,
        hi=hi,
        mni_origin=mni_origin,
        voxel_mm=voxel_mm,
        candidates=grid[keep].astype(np.float64),
        depth_mm=d[keep],
        in_wm=wm_at[keep] >= 0.5,
    )


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
# Step 1: the warp


@dataclass
class WarpedAnatomy:
    """The anatomy of one case in the output grid, over the brain's box only.

    Attributes:
        mirrored: the anatomy is the left-right mirror image of the template's.
        sources: per output axis, the template voxel coordinate of every output index.
        brain_box: slices of the output grid that hold the brain.
        brain: bool ``(x, y, z)`` over ``brain_box``.
        tissue: float32 ``(2, x, y, z)``: CSF and WM fractions (GM = brain - CSF - WM), modified
            in place by the mass effect.
        voxel_mm: voxel size of the output grid (mm).
    """

    mirrored: bool
    sources: list[np.ndarray]
    brain_box: tuple[slice, ...]
    brain: np.ndarray
    tissue: np.ndarray
    voxel_mm: float

    @property
    def csf(self) -> np.ndarray:
        return self.tissue[0]

    @property
    def wm(self) -> np.ndarray:
        return self.tissue[1]

    @property
    def box_lo(self) -> np.ndarray:
        """Output voxel of the brain box's first corner (float)."""
        return np.array([s.start for s in self.brain_box], dtype=float)


def warp_anatomy(rng: np.random.Generator, config: SynthConfig, anatomy: Anatomy) -> WarpedAnatomy:
    """Step 1: separable warp of the template into the output grid, on the brain's box only."""
    mirrored = bool(rng.random() < config.mirror_probability)
    sources = axis_source(rng, config, anatomy, config.shape, mirrored)
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
    # maps[1:]: CSF, WM fractions; GM = 1 - CSF - WM inside the brain.
    brain = maps[0] >= 0.5
    return WarpedAnatomy(mirrored, sources, brain_box, brain, maps[1:], anatomy.voxel_mm)


def axis_source(
    rng: np.random.Generator,
    config: SynthConfig,
    anatomy: Anatomy,
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


# --------------------------------------------------------------------------------------------
# Steps 2-3: lesions and mass effect


def place_lesions(
    rng: np.random.Generator,
    config: SynthConfig,
    plan: CasePlan,
    anatomy: Anatomy,
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


def box_around(centre: np.ndarray, half: float, shape: Sequence[int]) -> tuple[slice, ...]:
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
    box = box_around(lesion.centre, support, tissue.shape[1:])
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


def apply_mass_effects(
    rng: np.random.Generator, config: SynthConfig, plan: CasePlan, warped: WarpedAnatomy
) -> None:
    """Step 3: push the tissue away from every lesion of ``plan`` (in place); the brain outline
    stays (the skull does not move)."""
    for lesion in plan.lesions:
        low, high = config.mass_effect
        strength = rng.uniform(low, high) * (0.3 if plan.tiny else 1.0)
        _apply_mass_effect(warped.tissue, lesion, strength, config, warped.voxel_mm)
    csf, wm = warped.tissue
    np.clip(csf, 0.0, 1.0, out=csf)
    np.clip(wm, 0.0, 1.0, out=wm)
    csf *= warped.brain
    wm *= warped.brain
