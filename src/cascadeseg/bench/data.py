"""The data suite: synthesis, reading + preprocessing, cache loads, crops + augmentation, LWS.

Measuring functions (each returns numbers, writes nothing that outlives it):
:func:`benchmark_synth` (the synthetic generator), :func:`benchmark_preprocess` (reading,
validating and preprocessing one case, and loading it from the cache), :func:`crop_rate` (the
augmented 3D crop dataset), :func:`benchmark_lws` (the CU-Net loss weights); :func:`data_suite`
records their rows. Targets (issue 2): synth <= 3 s per case; read + validate + preprocess
<= 1.5 s; cache load <= 0.1 s (240 x 240 x 155 cases).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from cascadeseg.bench.inputs import (
    QUICK_3D,
    QUICK_SYNTH_SCALE,
    cpu_recipe,
    synthetic_data,
    synthetic_slices,
)
from cascadeseg.bench.rows import Suite, add_row, size_text
from cascadeseg.bench.timing import measure
from cascadeseg.data.cache import PreprocessCache, _safe_name
from cascadeseg.data.case import Case
from cascadeseg.data.datasets import CropDataset3D
from cascadeseg.data.layouts import CaseRef, discover_cases, read_case
from cascadeseg.data.preprocess import PreprocessConfig, Preprocessed, preprocess_case
from cascadeseg.data.synth import SynthConfig, synthesize_case
from cascadeseg.errors import InputError
from cascadeseg.losses.lws import lws_regions, lws_weights


def benchmark_synth(n: int = 3, config: SynthConfig | None = None) -> dict[str, float]:
    """Seconds per :func:`~cascadeseg.data.synth.synthesize_case` (median of ``n`` after one
    warm-up case).

    Returns:
        ``{"seconds_per_case": median, "min_s": ..., "max_s": ..., "template_load_s": first
        call's extra time, "n": n}``.
    """
    config = config or SynthConfig()
    first = measure(
        lambda: synthesize_case(10_000, case_id="warmup", config=config), repeats=1, warmup=0
    ).median
    seeds = itertools.count()

    def one_case() -> None:
        i = next(seeds)
        synthesize_case(i, case_id=f"bench_{i}", config=config)

    timing = measure(one_case, repeats=n, warmup=0)
    return {
        "seconds_per_case": timing.median,
        "min_s": min(timing.times),
        "max_s": max(timing.times),
        "template_load_s": max(first - timing.median, 0.0),
        "n": float(n),
    }


def _case_or_ref(path_or_case: str | Path | Case | CaseRef) -> tuple[Case | None, CaseRef | None]:
    """An in-memory case, or the reference of a case on disk (a dataset folder's first)."""
    if isinstance(path_or_case, Case):
        return path_or_case, None
    if isinstance(path_or_case, (str, Path)):
        refs = discover_cases(Path(path_or_case))
        if not refs:
            raise InputError(f"{path_or_case}: no cases found")
        return None, refs[0]
    return None, path_or_case


def _cache_seconds(
    cache: PreprocessCache, case: Case, ref: CaseRef | None, repeats: int
) -> tuple[float, float]:
    """Seconds of one cold cache ``get`` (hash, read, preprocess, write) and of a warm load."""
    if ref is not None:
        write_s = measure(lambda: cache.get(ref), repeats=1, warmup=0).median
        # A warm get: stat + metadata + memory maps.
        return write_s, measure(lambda: cache.get(ref), repeats=repeats).median
    write_s = measure(lambda: cache.get_case(case), repeats=1, warmup=0).median
    # An in-memory case is keyed by hashing its arrays (~0.1 s for 35 MB); time the load
    # alone, as for a file-based case whose digests are memoised.
    key = cache._key_of_case(case)
    entry = cache.folder / f"{_safe_name(case.case_id)}.mem"
    return write_s, measure(lambda: cache._load(entry, key), repeats=repeats).median


def benchmark_preprocess(
    path_or_case: str | Path | Case | CaseRef,
    cfg: PreprocessConfig | None = None,
    *,
    repeats: int = 3,
    tmp_dir: str | Path | None = None,
) -> dict[str, float]:
    """Time reading + validating + preprocessing one case, and loading it from the cache.

    Each figure is the median of ``repeats`` runs after one warm-up run.

    Args:
        path_or_case: a dataset folder (its first case is used), a :class:`CaseRef`, or an
            in-memory :class:`Case` (then reading is not timed: ``read_s`` is 0).
        cfg: preprocessing settings.
        repeats: timed repetitions per figure.
        tmp_dir: where the temporary cache folder is made (default: the system's temp
            folder); it is removed afterwards.

    Returns:
        ``{"read_s", "preprocess_s", "read_preprocess_s", "cache_write_s", "cache_load_s",
        "shape_x", "shape_y", "shape_z"}``: seconds (``cache_write_s`` is one cold
        ``get``: hashing, reading, preprocessing and writing; ``cache_load_s`` a warm one) and
        the source shape in voxels. Targets (issue 2): ``read_preprocess_s`` <= 1.5 s and
        ``cache_load_s`` <= 0.1 s for a 240x240x155 case.
    """
    cfg = cfg or PreprocessConfig()
    case, ref = _case_or_ref(path_or_case)
    read_s = 0.0
    if ref is not None:
        reading = measure(lambda: read_case(ref), repeats=repeats)
        read_s, case = reading.median, reading.value
    assert case is not None
    loaded = case
    preprocess_s = measure(lambda: preprocess_case(loaded, cfg), repeats=repeats).median
    tmp = tempfile.mkdtemp(prefix="cascadeseg_bench_", dir=tmp_dir)
    try:
        write_s, load_s = _cache_seconds(PreprocessCache(Path(tmp), cfg), case, ref, repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shape = case.image.shape[1:]
    return {
        "read_s": read_s,
        "preprocess_s": preprocess_s,
        "read_preprocess_s": read_s + preprocess_s,
        "cache_write_s": write_s,
        "cache_load_s": load_s,
        "shape_x": float(shape[0]),
        "shape_y": float(shape[1]),
        "shape_z": float(shape[2]),
    }


def benchmark_lws(
    *,
    batch: int = 8,
    size: int = 240,
    contour_width: int = 10,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
) -> dict[str, float]:
    """Time ``lws_regions`` and ``lws_weights`` (:mod:`cascadeseg.losses.lws`) on synthetic
    ``batch x size x size`` slices.

    Returns:
        ``{"regions_s": median seconds, "weights_s": median seconds, "batch": ..., "size": ...}``.
    """
    dev = torch.device(device)
    labels, brain = synthetic_slices(batch, size, dev)
    regions_s = measure(
        lambda: lws_regions(labels, brain, contour_width),
        repeats=repeats,
        warmup=warmup,
        device=dev,
    ).median
    weights_s = measure(
        lambda: lws_weights(labels, brain, net=1, alpha=2.0, beta=1.5, contour_width=contour_width),
        repeats=repeats,
        warmup=warmup,
        device=dev,
    ).median
    return {"regions_s": regions_s, "weights_s": weights_s, "batch": batch, "size": size}


def crop_rate(
    pre: Preprocessed, size: Sequence[int], *, items: int = 20, repeats: int = 3
) -> float:
    """Items per second of :class:`~cascadeseg.data.datasets.CropDataset3D` (augmented) over one
    preprocessed case, in this process (a loader worker's rate)."""
    dataset = CropDataset3D([pre], patch_size=size, augment=True, samples_per_epoch=items)

    def run() -> None:
        for i in range(items):
            dataset[i]

    return items / measure(run, repeats=repeats, warmup=1).median


# --------------------------------------------------------------------------------------------
# the suite


def data_suite(suite: Suite, *, device: str, quick: bool, peak: dict[str, float]) -> None:
    """Synthesis, reading + preprocessing, cache loads, 3D crops + augmentation, LWS weights
    (targets: the module docstring)."""
    repeats = 1 if quick else 3
    config = SynthConfig(shape_scale=QUICK_SYNTH_SCALE if quick else 1.0)
    synth = benchmark_synth(n=1 if quick else 3, config=config)
    add_row(
        suite,
        "synth: one 240x240x155 case" if not quick else "synth: one case (quick: 30x30x19)",
        synth["seconds_per_case"],
        "s",
        target=("<=", 3.0),
        limited_by="compute (numpy/scipy filtering and resampling, one core)",
        template_load_s=synth["template_load_s"],
    )
    _preprocess_rows(suite, quick=quick, repeats=repeats)
    _crop_rows(suite, quick=quick, repeats=repeats)
    lws = benchmark_lws(
        batch=2 if quick else 8,
        size=64 if quick else 240,
        repeats=1 if quick else 10,
        warmup=1 if quick else 2,
        device=device,
    )
    add_row(
        suite,
        f"LWS weights, batch {lws['batch']} x {lws['size']}^2 slices",
        lws["weights_s"],
        "s",
        limited_by="compute (contour morphology and sampling per slice)",
        regions_s=lws["regions_s"],
    )


def _preprocess_rows(suite: Suite, *, quick: bool, repeats: int) -> None:
    """Reading + preprocessing the synthetic case, and loading it from the cache."""
    pre = benchmark_preprocess(synthetic_data(quick).ref, repeats=repeats)
    shape = f"{int(pre['shape_x'])}x{int(pre['shape_y'])}x{int(pre['shape_z'])}"
    add_row(
        suite,
        f"read + validate + preprocess one case ({shape})",
        pre["read_preprocess_s"],
        "s",
        target=("<=", 1.5),
        limited_by="I/O + gzip decompression (nibabel), then numpy passes over the volume",
        read_s=pre["read_s"],
        preprocess_s=pre["preprocess_s"],
    )
    add_row(
        suite,
        f"load one case from the cache ({shape})",
        pre["cache_load_s"],
        "s",
        target=("<=", 0.1),
        limited_by="I/O (file metadata and memory-mapping; voxels are read on use)",
        cold_get_s=pre["cache_write_s"],
    )


def _crop_rows(suite: Suite, *, quick: bool, repeats: int) -> None:
    """Augmented 3D crops per second at the paper's 128^3 and the CPU recipe's patch."""
    recipe = cpu_recipe("two_stage", (64, 64, 64), 8)
    sizes = [(4, 4, 4), QUICK_3D] if quick else [(128, 128, 128), recipe["size"]]
    pre = synthetic_data(quick).pre
    for size in dict.fromkeys(tuple(s) for s in sizes):
        if quick:
            note = "quick"
        elif size == (128, 128, 128):
            note = "paper size"
        else:
            note = f"CPU recipe ({recipe['source']})"
        add_row(
            suite,
            f"3D crop + augmentation {size_text(size)} (one process)",
            crop_rate(pre, size, items=2 if quick else 20, repeats=repeats),
            "items/s",
            limited_by="memory bandwidth (copying, flipping and scaling a 4-channel crop)",
            note=note,
        )
