"""Satellite lesions for multi-focal synthetic cases (:mod:`cascadeseg.data.synth`).

A satellite is a small solid tumour nodule (core of enhancing tumour, or of non-enhancing tumour
in cases without ET) near the tumour of a case, placed at a chosen *gap* from it, in voxels of the
output grid, because lesion-wise evaluation rules are written in voxels:

* ``near`` satellites lie 1-3 voxels from the tumour (by default): within the reach of the
  BraTS 2023 ranking code's ground-truth dilation (3 iterations for GLI/SSA/PED), so that rule
  merges them with the main lesion while the official package (panoptica, plain connected
  components) counts them as lesions of their own;
* ``far`` satellites lie 10-20 voxels away: separate lesions under both rules (two masks dilated
  3 times by the 18-neighbourhood and joined by 26-connectivity can touch across a gap of up to
  about 10 voxels along a diagonal).

Each satellite is separate in one region:

* ``wt`` satellites lie outside the whole tumour: a component of their own in WT, TC (and ET);
* ``tc`` satellites lie inside the edema of the main tumour: a component of their own in TC (and
  ET), part of the main lesion in WT. This is the common picture of a satellite nodule.

The gap is measured with the Euclidean distance transform (voxel units): a satellite at gap ``g``
has its nearest voxel at distance ``>= g + 1`` from the region it is separate from (``g`` empty
voxels along an axis), so it never touches it, not even diagonally (26-connectivity). Satellites
keep at least the far gap from each other, so a near satellite merges only with the tumour.

The functions work on the soft maps of the generator's tumour box (float32, one shape) before
they are thresholded into labels, so the image shows the nodules that the label holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from cascadeseg.data.synth_config import SynthConfig


@dataclass
class SoftMaps:
    """The generator's soft tumour maps over the tumour box (float32, same shape ``(x, y, z)``),
    modified in place: core fraction, necrosis fraction, enhancing flag, edema image weight."""

    core: np.ndarray
    necrosis: np.ndarray
    enhancing: np.ndarray
    edema_signal: np.ndarray


def satellite_margin_voxels(config: SynthConfig, voxel_mm: float, ring_iterations: int) -> float:
    """How far beyond the tumour a satellite may reach (voxels): the tumour box grows by this."""
    radius = max(config.satellite_radius_mm[1] / voxel_mm, 1.0)
    return config.satellite_far_gap_voxels[1] + 2.0 * (radius + ring_iterations) + 3.0


def _ball_ramp(
    centre: np.ndarray, radius: float, edge: float, shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """A soft ball (0.5 at ``radius``, linear over ``edge`` voxels) in a local box.

    Returns ``(box, ramp, distance)``: the box (slices of ``shape``), the soft ball and the
    distance to ``centre`` over the box (voxels)."""
    half = radius + edge + 1.0
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, np.array(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    rel = np.meshgrid(
        *[np.arange(s.start, s.stop, dtype=np.float32) - c for s, c in zip(box, centre)],
        indexing="ij",
        sparse=True,
    )
    distance = np.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2)
    ramp = np.clip((radius - distance) / max(edge, 1e-6) + 0.5, 0.0, 1.0).astype(np.float32)
    return box, ramp, distance


def _candidates(
    distance: np.ndarray, target: float, allowed: np.ndarray, margin: float
) -> np.ndarray:
    """Flat indices of voxels at ``target`` (+- 0.75) from a region, allowed, and at least
    ``margin`` voxels from every face of the box."""
    ok = allowed & (np.abs(distance - target) <= 0.75)
    m = int(np.ceil(margin))
    if m > 0:
        face = np.zeros_like(ok)
        face[m:-m, m:-m, m:-m] = True
        ok &= face
    return np.flatnonzero(ok)


@dataclass
class _Tumour:
    """What satellites are placed against, over the tumour box (voxel distances)."""

    d_wt: np.ndarray  # distance to the whole tumour
    d_tc: np.ndarray  # distance to the tumour core
    depth: np.ndarray  # distance to the brain's outside
    inside: np.ndarray  # the brain
    in_edema: np.ndarray  # edema of the tumour (WT but not TC), inside the brain
    base_wt: np.ndarray  # the whole tumour


def _place(
    rng: np.random.Generator,
    tumour: _Tumour,
    taken: np.ndarray,
    *,
    region: str,
    gap: int,
    radius: float,
    far_lo: int,
    edge: float,
    ring_iterations: int,
) -> tuple[str, int] | None:
    """``(region, flat index of the centre)`` of one satellite, or None without room. Inside the
    edema there may be no room (thin edema): then outside the tumour is tried."""
    d_others = ndimage.distance_transform_edt(~taken) if taken.any() else None
    for where in (region, "wt") if region == "tc" else (region,):
        reach = radius + (0 if where == "tc" else ring_iterations)
        distance = tumour.d_tc if where == "tc" else tumour.d_wt
        if where == "tc":
            allowed = tumour.in_edema
        else:
            allowed = tumour.inside & ~tumour.base_wt & (tumour.depth > reach + 1)
        if d_others is not None:
            allowed = allowed & (d_others >= far_lo + 1 + reach)
        flat = _candidates(distance, gap + 1 + reach, allowed, reach + edge + 2)
        if flat.size:
            return where, int(flat[rng.integers(flat.size)])
    return None


def add_satellites(
    rng: np.random.Generator,
    n_satellites: int,
    maps: SoftMaps,
    *,
    base_wt: np.ndarray,
    base_tc: np.ndarray,
    inside: np.ndarray,
    has_et: bool,
    config: SynthConfig,
    voxel_mm: float,
    ring_iterations: int,
) -> list[dict[str, Any]]:
    """Paint up to ``n_satellites`` satellite nodules into ``maps`` (in place).

    Args:
        rng: the generator of the satellites (its own stream, so the rest of a case does not move).
        n_satellites: how many to try; one without room is left out.
        maps: the soft maps of the tumour box.
        base_wt: ``(x, y, z)`` bool, the whole tumour before satellites (label >= 0.5 level).
        base_tc: ``(x, y, z)`` bool, the tumour core before satellites.
        inside: ``(x, y, z)`` bool, the brain.
        has_et: satellites are enhancing (else non-enhancing) nodules.
        config: generator knobs (``satellite_*``, ``p_near_satellite``, ``p_satellite_in_edema``).
        voxel_mm: voxel size (mm).
        ring_iterations: width of the edema ring the generator puts around every core (voxels).

    Returns:
        One record per satellite painted: ``centre_voxel`` (in the box), ``radius_voxels``,
        ``kind`` (``near``/``far``), ``region`` (``wt``/``tc``: where it is a lesion of its own),
        ``gap_voxels`` (its minimum gap to that region of the tumour).
    """
    tumour = _Tumour(
        d_wt=ndimage.distance_transform_edt(~base_wt),
        d_tc=ndimage.distance_transform_edt(~base_tc),
        depth=ndimage.distance_transform_edt(inside),
        inside=inside,
        in_edema=base_wt & ~base_tc & inside,
        base_wt=base_wt,
    )
    taken = np.zeros(base_wt.shape, dtype=bool)  # satellites' footprints (core + ring)
    edge = config.edge_mm / voxel_mm
    records: list[dict[str, Any]] = []
    for _ in range(n_satellites):
        near = bool(rng.random() < config.p_near_satellite)
        region = "tc" if rng.random() < config.p_satellite_in_edema else "wt"
        low, high = config.satellite_near_gap_voxels if near else config.satellite_far_gap_voxels
        gap = int(rng.integers(low, high + 1))
        radius = max(float(rng.uniform(*config.satellite_radius_mm)) / voxel_mm, 1.0)
        chosen = _place(
            rng,
            tumour,
            taken,
            region=region,
            gap=gap,
            radius=radius,
            far_lo=config.satellite_far_gap_voxels[0],
            edge=edge,
            ring_iterations=ring_iterations,
        )
        if chosen is None:
            continue
        region, index = chosen
        centre = np.array(np.unravel_index(index, base_wt.shape), dtype=np.float64)
        centre += rng.uniform(-0.25, 0.25, size=3)
        _paint(maps, tumour, taken, centre, radius, edge, region, gap, ring_iterations, has_et)
        records.append(
            {
                "centre_voxel": [float(c) for c in centre],
                "radius_voxels": round(radius, 3),
                "kind": "near" if near else "far",
                "region": region,
                "gap_voxels": gap,
            }
        )
    return records


def _paint(
    maps: SoftMaps,
    tumour: _Tumour,
    taken: np.ndarray,
    centre: np.ndarray,
    radius: float,
    edge: float,
    region: str,
    gap: int,
    ring_iterations: int,
    has_et: bool,
) -> None:
    """Paint one satellite core into ``maps`` and its footprint into ``taken`` (in place)."""
    distance = tumour.d_tc if region == "tc" else tumour.d_wt
    box, ball, dist_centre = _ball_ramp(centre, radius, edge, tumour.inside.shape)
    # The core keeps the gap exactly: its ring (Euclidean reach <= ring_iterations) then stays
    # at least gap + 1 voxels from the region.
    keep = distance[box] >= gap + 1 + (0 if region == "tc" else ring_iterations)
    ball *= keep & tumour.inside[box]
    wins = ball > maps.core[box]
    maps.core[box] = np.where(wins, ball, maps.core[box])
    maps.necrosis[box] = np.where(wins, np.float32(0.0), maps.necrosis[box])
    maps.enhancing[box] = np.where(wins, np.float32(has_et), maps.enhancing[box])
    taken[box] |= dist_centre <= radius + ring_iterations + 0.5
