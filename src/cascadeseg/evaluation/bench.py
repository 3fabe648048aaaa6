"""Benchmark of the metrics: cascadeseg vs MONAI vs medpy on the same full-size cases.

:func:`benchmark_metrics` builds BraTS-sized (240 x 240 x 155) cases with a tumour of about
100k voxels (edema around a core of necrosis and enhancing tumour, with a smooth random
boundary) and a prediction that is the reference shifted by a few voxels and eroded at the
whole-tumour boundary, then times all 12 metrics per case with each library on one thread
(warm-up, repeats, median) and reports the largest disagreement of the values.

Note on HD95: MONAI's ``compute_hausdorff_distance(percentile=95)`` takes the maximum of the two
directed 95th percentiles, while cascadeseg, medpy and the official BraTS evaluation pool both
directions' distances; the reported MONAI HD95 disagreement measures that difference of
definition, not an error.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from cascadeseg.data.labels import REGION_LABELS, REGIONS
from cascadeseg.evaluation.metrics import METRIC_NAMES, case_metrics


def make_benchmark_case(
    seed: int, shape: tuple[int, int, int] = (240, 240, 155), radius: float = 30.0
) -> tuple[np.ndarray, np.ndarray]:
    """A realistic ``(prediction, reference)`` pair of internal label maps (uint8, ``shape``).

    The reference is a lumpy sphere of radius ``radius`` voxels (about 110k voxels at 30):
    edema outside, enhancing tumour, necrosis inside. The prediction is the reference shifted
    by ``(2, -1, 1)`` voxels with its whole-tumour boundary eroded by one voxel.
    """
    rng = np.random.default_rng(seed)
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = np.array(shape) / 2 + rng.integers(-10, 10, 3)
    stretch = rng.uniform(0.85, 1.15, 3)
    dist = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, stretch)))
    lumps = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 4) * 8
    dist = dist + lumps
    ref = np.zeros(shape, dtype=np.uint8)
    ref[dist < radius] = 2
    ref[dist < radius * 0.6] = 3
    ref[dist < radius * 0.33] = 1
    pred = np.roll(ref, (2, -1, 1), axis=(0, 1, 2))
    pred = np.where(ndimage.binary_erosion(pred > 0), pred, 0).astype(np.uint8)
    return pred, ref


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    value = fn()  # warm-up (imports, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), value


def _monai_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]
) -> dict[str, float]:
    import torch
    from monai.metrics import (
        compute_confusion_matrix_metric,
        compute_dice,
        compute_hausdorff_distance,
        get_confusion_matrix,
    )

    def regions(label: np.ndarray) -> torch.Tensor:
        masks = np.stack([np.isin(label, labels) for labels in REGION_LABELS])
        return torch.from_numpy(masks[None].astype(np.float32))  # (1, 3, X, Y, Z)

    p, r = regions(pred), regions(ref)
    out: dict[str, float] = {}
    dice = compute_dice(p, r, include_background=True, ignore_empty=False)[0]
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(
            p, r, include_background=True, percentile=95, spacing=spacing
        )[0]
    confusion = get_confusion_matrix(p, r, include_background=True)
    sens = compute_confusion_matrix_metric("sensitivity", confusion)[0]
    spec = compute_confusion_matrix_metric("specificity", confusion)[0]
    for i, region in enumerate(REGIONS):
        key = region.lower()
        out[f"dice_{key}"] = float(dice[i])
        out[f"hd95_{key}"] = float(hd[i])
        out[f"sens_{key}"] = float(sens[i])
        out[f"spec_{key}"] = float(spec[i])
    return out


def _medpy_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]
) -> dict[str, float]:
    from medpy.metric import binary

    out: dict[str, float] = {}
    for region, labels in zip(REGIONS, REGION_LABELS):
        key = region.lower()
        p, r = np.isin(pred, labels), np.isin(ref, labels)
        out[f"dice_{key}"] = float(binary.dc(p, r))
        out[f"hd95_{key}"] = float(binary.hd95(p, r, voxelspacing=spacing))
        out[f"sens_{key}"] = float(binary.sensitivity(p, r))
        out[f"spec_{key}"] = float(binary.specificity(p, r))
    return out


def _max_disagreement(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    """Largest absolute difference per metric family (dice, hd95, sens, spec)."""
    worst: dict[str, float] = {}
    for name in METRIC_NAMES:
        family = name.split("_")[0]
        a, b = ours[name], theirs[name]
        diff = 0.0 if (math.isnan(a) and math.isnan(b)) else abs(a - b)
        worst[family] = max(worst.get(family, 0.0), diff)
    return worst


def benchmark_metrics(
    n_cases: int = 3,
    *,
    shape: tuple[int, int, int] = (240, 240, 155),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-case time of all 12 metrics: cascadeseg vs MONAI vs medpy (when installed).

    Args:
        n_cases: cases to generate (see :func:`make_benchmark_case`).
        shape: grid of each case in voxels.
        spacing: voxel size in mm passed to every library.
        repeats: timed repeats per case after one warm-up; the median is kept.
        seed: seed of the first case.

    Returns:
        ``{"n_cases", "shape", "tumour_voxels": [...], "seconds_per_case": {library: median over
        cases}, "seconds": {library: [per case]}, "max_disagreement": {library: {family: value}},
        "libraries": [...], "notes": [...]}``; libraries are ``cascadeseg``, ``monai`` and
        ``medpy``. Torch runs on one thread so that every library uses one core.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    libraries: dict[str, Callable[[np.ndarray, np.ndarray], dict[str, float]]] = {
        "cascadeseg": lambda p, r: case_metrics(p, r, spacing),
        "monai": lambda p, r: _monai_metrics(p, r, spacing),
    }
    notes = [
        "MONAI HD95 = max of the two directed 95th percentiles; cascadeseg/medpy/BraTS pool them"
    ]
    try:
        import medpy.metric  # noqa: F401

        libraries["medpy"] = lambda p, r: _medpy_metrics(p, r, spacing)
    except ImportError:
        notes.append("medpy not installed (pip install medpy): left out")
    seconds: dict[str, list[float]] = {name: [] for name in libraries}
    worst: dict[str, dict[str, float]] = {name: {} for name in libraries if name != "cascadeseg"}
    voxels = []
    try:
        for i in range(n_cases):
            pred, ref = make_benchmark_case(seed + i, shape)
            voxels.append(int(np.count_nonzero(ref)))
            values: dict[str, dict[str, float]] = {}
            for name, fn in libraries.items():
                elapsed, values[name] = _time(functools.partial(fn, pred, ref), repeats)
                seconds[name].append(elapsed)
            for name in worst:
                for family, diff in _max_disagreement(values["cascadeseg"], values[name]).items():
                    worst[name][family] = max(worst[name].get(family, 0.0), diff)
    finally:
        torch.set_num_threads(threads)
    return {
        "n_cases": n_cases,
        "shape": list(shape),
        "spacing": list(spacing),
        "tumour_voxels": voxels,
        "libraries": list(libraries),
        "seconds": seconds,
        "seconds_per_case": {name: float(np.median(s)) for name, s in seconds.items()},
        "max_disagreement": worst,
        "notes": notes,
    }


# --------------------------------------------------------------------------------------------
# Lesion-wise metrics beside the official package


def make_lesion_benchmark_case(
    seed: int, shape: tuple[int, int, int] = (240, 240, 155), n_lesions: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """A multi-lesion ``(prediction, reference)`` pair of internal label maps (uint8, ``shape``).

    ``n_lesions`` reference lesions of radius 2-14 voxels (edema with a necrotic and enhancing
    core when large enough), spread over the grid; the prediction shifts each by one voxel,
    misses one, splits one in two, and adds two small false positives far from every lesion.
    """
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.uint8)
    margin = np.array([20, 20, 20])
    for k in range(n_lesions):
        radius = float(rng.uniform(2.0, 14.0))
        centre = rng.uniform(margin, np.array(shape) - margin)
        box = tuple(
            slice(max(int(c - radius - 2), 0), min(int(c + radius + 3), n))
            for c, n in zip(centre, shape)
        )
        grid = np.ogrid[box]
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
        lesion = np.zeros(dist.shape, dtype=np.uint8)
        lesion[dist < radius] = 2
        lesion[dist < radius * 0.6] = 3
        lesion[dist < radius * 0.33] = 1
        ref[box] = np.maximum(ref[box], lesion)
        if k == 0:
            continue  # missed
        moved = np.roll(lesion, 1, axis=k % 3)
        if k == 1:  # split in two
            moved[moved.shape[0] // 2 - 1 : moved.shape[0] // 2 + 1] = 0
        pred[box] = np.maximum(pred[box], moved)
    for corner in ((5, 5, 5), (shape[0] - 9, 5, shape[2] - 9)):
        pred[tuple(slice(c, c + 3) for c in corner)] = 2
    return pred, ref


def benchmark_lesions(
    n_cases: int = 3,
    *,
    shape: tuple[int, int, int] = (240, 240, 155),
    n_lesions: int = 10,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-case time of the whole evaluation (12 global metrics + lesion-wise figures).

    cascadeseg: :func:`case_metrics` plus the lesion-wise figures of the five BraTS 2023 regions
    (WT, TC, ET, NETC, SNFH) under the official package's rules, and under both rule sets when
    MONAI is importable. The official package (``BraTS-evaluation`` + panoptica, when
    installed): ``Panoptica_Evaluator`` with its ``config_gli.yaml`` on the same arrays (its
    six groups, global Dice/NSD/HD95 and lesion-wise Dice/NSD/HD95), in the same process.

    Returns:
        ``{"seconds_per_case": {name: median wall time}, "cpu_seconds_per_case": {name: median
        process CPU time per call (warm-up included), the figure that a busy machine distorts
        least}, "seconds": {name: [...]}, "reference_lesions_wt": [...], "max_disagreement":
        {figure: value}, "notes": [...]}``.
    """
    from cascadeseg.evaluation.lesion_eval import case_lesion_figures

    def ours(pred: np.ndarray, ref: np.ndarray, rules: tuple[str, ...]) -> dict[str, float]:
        out = case_metrics(pred, ref)
        out.update(
            case_lesion_figures(pred, ref, (1, 1, 1), rules=rules, ref_convention="brats2023")[0]
        )
        return out

    runners: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {
        "cascadeseg (official rules)": lambda p, r: ours(p, r, ("panoptica",)),
    }
    notes = []
    try:
        import monai.metrics.utils  # noqa: F401

        runners["cascadeseg (both rule sets)"] = lambda p, r: ours(p, r, ("panoptica", "brats2023"))
    except ImportError:
        notes.append("MONAI not importable: the brats2023 rules (surfel areas) left out")
    official = _official_evaluator()
    if official is not None:
        runners["BraTS-evaluation (panoptica)"] = lambda p, r: official.evaluate(
            p, r, voxelspacing=(1.0, 1.0, 1.0), verbose=False
        )
    else:
        notes.append("BraTS-evaluation not installed (pip install 'cascadeseg[oracle]'): left out")
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    counts, worst = [], {"tp_fp_fn": 0.0, "dice": 0.0, "hd95": 0.0}
    for i in range(n_cases):
        pred, ref = make_lesion_benchmark_case(seed + i, shape, n_lesions)
        counts.append(int(ndimage.label(ref > 0, structure=np.ones((3, 3, 3)))[1]))
        values = {}
        for name, fn in runners.items():
            start = time.process_time()
            elapsed, values[name] = _time(functools.partial(fn, pred, ref), repeats)
            cpu[name].append((time.process_time() - start) / (repeats + 1))
            seconds[name].append(elapsed)
        if official is not None:
            _lesion_disagreement(
                values["cascadeseg (official rules)"], values["BraTS-evaluation (panoptica)"], worst
            )
    return {
        "n_cases": n_cases,
        "shape": list(shape),
        "reference_lesions_wt": counts,
        "seconds": seconds,
        "seconds_per_case": {name: float(np.median(s)) for name, s in seconds.items()},
        "cpu_seconds_per_case": {name: float(np.median(s)) for name, s in cpu.items()},
        "max_disagreement": worst if official is not None else {},
        "notes": notes,
    }


def _official_evaluator() -> Any:
    try:
        from importlib.resources import files

        from panoptica import Panoptica_Evaluator
    except ImportError:
        return None
    config = files("brats_evaluation") / "configs" / "config_gli.yaml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Panoptica_Evaluator.load_from_config(str(config))


def _lesion_disagreement(ours: dict[str, float], official: Any, worst: dict[str, float]) -> None:
    for group in ("wt", "tc", "et", "netc", "snfh"):
        res = official[group].to_dict()
        counts = (res["tp"], res["fp"], res["fn"])
        mine = tuple(ours[f"lesion_{f}_{group}"] for f in ("tp", "fp", "fn"))
        worst["tp_fp_fn"] = max(worst["tp_fp_fn"], max(abs(a - b) for a, b in zip(counts, mine)))
        for figure, key in (("dice", "sq_dsc"), ("hd95", "sq_hd95")):
            theirs = res[key]
            if theirs is not None and math.isinf(theirs):
                theirs = 373.0
            mine_v = ours[f"lesion_{figure}_{group}"]
            if theirs is None or math.isnan(theirs) or math.isnan(mine_v):
                continue
            worst[figure] = max(worst[figure], abs(theirs - mine_v))
