"""Step 4 of a synthetic case: the tumour compartments and the label map.

Per lesion, a randomly rotated ellipsoid whose radius is deformed by a smooth random field
(lobulated core), a necrotic centre inside an enhancing rim, and edema around the core that
spreads along white matter and spares the ventricles; satellite nodules for multi-focal cases
(:mod:`cascadeseg.data.synth_satellites`). Soft partial-volume maps feed the image; the label map
is their 0.5 level, so image and label agree, and the label hierarchy holds by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cascadeseg.data.labels import ED, ET, NCR
from cascadeseg.data.smooth_fields import smooth_noise
from cascadeseg.data.synth_anatomy import WarpedAnatomy, box_around
from cascadeseg.data.synth_config import CasePlan, Lesion, SynthConfig
from cascadeseg.data.synth_satellites import SoftMaps, add_satellites, satellite_margin_voxels


def smoothstep_ramp(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction: 0.5 at distance 0, linear over ``width`` (inside positive)."""
    out = np.asarray(signed_distance, dtype=np.float32) * np.float32(1.0 / max(width, 1e-6))
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def lesion_fields(
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


def core_and_edema(
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


@dataclass
class TumourMaps:
    """The tumour of one case: soft maps over the tumour box (float32, one shape ``(x, y, z)``)
    and the label map over the brain box.

    Attributes:
        box: slices of the brain box that hold the tumour (and its satellites).
        core, necrosis, enhancing: core fraction, necrosis fraction inside the core, enhancing
            flag (1 where the core is enhancing tumour).
        edema_signal: the edema's weight in the image.
        label: uint8 ``(X, Y, Z)`` over the brain box, internal labels.
        satellites: one record per satellite nodule painted (:func:`add_satellites`), centres in
            output voxels.
    """

    box: tuple[slice, ...]
    core: np.ndarray
    necrosis: np.ndarray
    enhancing: np.ndarray
    edema_signal: np.ndarray
    label: np.ndarray
    satellites: list[dict[str, Any]] = field(default_factory=list)


def _tumour_box(
    config: SynthConfig, plan: CasePlan, box_shape: tuple[int, ...], vox: float, ring: int
) -> tuple[tuple[slice, ...], list[float]]:
    """The box (in the brain box) that holds every lesion's edema and satellites, and each
    lesion's reach (voxels)."""
    reach = []
    for lesion in plan.lesions:
        r = lesion.core_radius_mm / vox
        edema_reach = (
            r
            * config.axis_ratio[1]
            * config.edema_ratio[1]
            * (1 + config.edema_irregularity[1] * 2.5 + config.edema_wm_affinity)
        )
        reach.append(edema_reach + 2 * config.edema_edge_mm / vox + 2)
    if plan.n_satellites:
        margin = satellite_margin_voxels(config, vox, ring)
        reach = [h + margin for h in reach]
    lo = np.min([np.maximum(les.centre - h, 0) for les, h in zip(plan.lesions, reach)], axis=0)
    hi = np.max(
        [np.minimum(les.centre + h + 1, box_shape) for les, h in zip(plan.lesions, reach)], axis=0
    )
    return tuple(slice(int(a), int(b)) for a, b in zip(np.floor(lo), np.ceil(hi))), reach


def _paint_lesions(
    rng: np.random.Generator,
    config: SynthConfig,
    plan: CasePlan,
    warped: WarpedAnatomy,
    tbox: tuple[slice, ...],
    reach: list[float],
) -> tuple[np.ndarray, SoftMaps]:
    """The soft maps of every lesion over ``tbox``: the edema's label ramp and the soft maps
    (the core of the largest core fraction wins where lesions overlap)."""
    tshape = tuple(s.stop - s.start for s in tbox)
    edema = np.zeros(tshape, dtype=np.float32)  # label ramp
    soft = SoftMaps(
        core=np.zeros(tshape, dtype=np.float32),
        necrosis=np.zeros(tshape, dtype=np.float32),
        enhancing=np.zeros(tshape, dtype=np.float32),
        edema_signal=np.zeros(tshape, dtype=np.float32),  # image weight
    )
    for lesion, h in zip(plan.lesions, reach):
        lbox = box_around(lesion.centre, h, warped.brain.shape)
        local = tuple(slice(a.start - t.start, a.stop - t.start) for a, t in zip(lbox, tbox))
        e, es, c, n = lesion_fields(
            rng, lesion, config, warped.csf, warped.wm, lbox, warped.voxel_mm
        )
        np.maximum(edema[local], e, out=edema[local])
        np.maximum(soft.edema_signal[local], es, out=soft.edema_signal[local])
        wins = c > soft.core[local]
        soft.core[local] = np.where(wins, c, soft.core[local])
        soft.necrosis[local] = np.where(wins, n, soft.necrosis[local])
        soft.enhancing[local] = np.where(wins, np.float32(lesion.has_et), soft.enhancing[local])
    return edema, soft


def _paint_satellites(
    rng: np.random.Generator,
    config: SynthConfig,
    plan: CasePlan,
    soft: SoftMaps,
    edema: np.ndarray,
    inside: np.ndarray,
    ring: int,
    vox: float,
) -> list[dict[str, Any]]:
    """Satellite nodules painted into ``soft`` (in place); their records, centres in the box."""
    base_core, base_ed, _ = core_and_edema(soft.core, edema, inside, ring)
    return add_satellites(
        rng,
        plan.n_satellites,
        soft,
        base_wt=base_core | base_ed,
        base_tc=base_core,
        inside=inside,
        has_et=plan.has_et,
        config=config,
        voxel_mm=vox,
        ring_iterations=ring,
    )


def tumour_maps(
    rng: np.random.Generator,
    satellite_rng: np.random.Generator | None,
    config: SynthConfig,
    plan: CasePlan,
    warped: WarpedAnatomy,
) -> TumourMaps:
    """Step 4: the tumour maps of ``plan``'s lesions (and satellites) and the label map."""
    vox = warped.voxel_mm
    ring = max(1, round(config.edema_min_margin_mm / vox))
    tbox, reach = _tumour_box(config, plan, warped.brain.shape, vox, ring)
    edema, soft = _paint_lesions(rng, config, plan, warped, tbox, reach)
    tbrain = warped.brain[tbox]
    soft.core *= tbrain
    satellites: list[dict[str, Any]] = []
    if plan.n_satellites and satellite_rng is not None:
        satellites = _paint_satellites(satellite_rng, config, plan, soft, edema, tbrain, ring, vox)
        for record in satellites:
            offset = [t.start + b.start for t, b in zip(tbox, warped.brain_box)]
            record["centre_voxel"] = [c + o for c, o in zip(record["centre_voxel"], offset)]
    is_core, is_ed, edema_ring = core_and_edema(soft.core, edema, tbrain, ring)
    soft.edema_signal[edema_ring] = np.maximum(soft.edema_signal[edema_ring], 0.6)
    soft.edema_signal *= tbrain
    is_ncr = is_core & ((soft.necrosis >= 0.5) | (soft.enhancing < 0.5))
    is_et = is_core & ~is_ncr
    label = np.zeros(warped.brain.shape, dtype=np.uint8)
    tlabel = label[tbox]
    tlabel[is_ed] = ED
    tlabel[is_ncr] = NCR
    tlabel[is_et] = ET
    return TumourMaps(
        tbox, soft.core, soft.necrosis, soft.enhancing, soft.edema_signal, label, satellites
    )
