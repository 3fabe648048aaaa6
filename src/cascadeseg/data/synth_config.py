"""Settings of the synthetic generator, the BraTS grid it writes into, and the plan of a case.

See :mod:`cascadeseg.data.synth` for the generator itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: BraTS grid (voxels at 1 mm).
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
#: Where the centre of the brain's bounding box lands in the BraTS grid (voxels at 1 mm); SRI24
#: brains in BraTS files sit near the middle of the grid, spanning most of its 155 slices.
BRATS_BRAIN_CENTRE: tuple[float, float, float] = (119.5, 121.0, 76.0)


def brats_affine(shape: tuple[int, int, int] = BRATS_SHAPE) -> np.ndarray:
    """The axis-aligned affine of BraTS files: x and y flipped, origin ``(0, shape[1]-1, 0)``
    (1 mm voxels; multiply by ``diag(voxel size, 1)`` for others)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = (0.0, float(shape[1] - 1), 0.0)
    return affine


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
