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
development machine (see :func:`cascadeseg.bench.data.benchmark_synth`); the templates are
loaded once per process (``lru_cache``, about 2 s). Work is restricted to the brain's box and
each tumour's box. Smooth random fields are made on a coarse grid and upsampled by tensor
products of 1D cubic B-spline matrices (BLAS), not by filtering the full volume.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cascadeseg.data.case import Case, Meta
from cascadeseg.data.layouts import LAYOUTS
from cascadeseg.data.synth_anatomy import (
    anatomy_at,
    apply_mass_effects,
    place_lesions,
    warp_anatomy,
)
from cascadeseg.data.synth_config import CasePlan, SynthConfig, brats_affine
from cascadeseg.data.synth_intensity import form_images
from cascadeseg.data.synth_tumour import tumour_maps
from cascadeseg.data.writers import case_paths, write_case
from cascadeseg.errors import InputError

__all__ = [
    "LAYOUT_CASE_IDS",
    "SynthConfig",
    "case_id_for",
    "case_seed",
    "plan_case",
    "refuse_existing",
    "synthesize_case",
    "synthesize_dataset",
]

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


# --------------------------------------------------------------------------------------------
# Plan


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
    anatomy = anatomy_at(float(config.shape_scale))
    warped = warp_anatomy(rng, config, anatomy)  # 1. anatomy
    lesions = place_lesions(rng, config, plan, anatomy, warped.sources, warped.box_lo)  # 2.
    plan = CasePlan(
        plan.has_et, plan.tiny, len(lesions), warped.mirrored, lesions, plan.n_satellites
    )
    apply_mass_effects(rng, config, plan, warped)  # 3.
    tumour = tumour_maps(rng, satellite_rng, config, plan, warped)  # 4.
    image = form_images(rng, config, warped, tumour)  # 5.
    shape = config.shape
    label = np.zeros(shape, dtype=np.uint8)
    label[warped.brain_box] = tumour.label
    vox = anatomy.voxel_mm
    meta = Meta(
        case_id=case_id,
        affine=brats_affine(shape) @ np.diag([vox, vox, vox, 1.0]),
        spacing=(vox, vox, vox),
        shape=shape,
        source_layout="synthetic",
        label_convention=label_convention,
        extra={"synth": _plan_record(seed, plan, warped.brain_box, tumour.satellites, config)},
    )
    return Case(image=image, label=label, meta=meta)


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
    index, seed, case_id, layout, out, config = job
    case = synthesize_case(
        case_seed(seed, index),
        case_id=case_id,
        config=config,
        label_convention=LAYOUTS[layout].label_convention,
    )
    return write_case(case, out, layout)


def refuse_existing(out: Path, n_cases: int, layout: str) -> None:
    """Raise :class:`InputError` if any file :func:`synthesize_dataset` would write exists."""
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
