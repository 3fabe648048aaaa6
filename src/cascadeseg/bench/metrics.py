"""The metrics suite: cascadeseg's metrics beside MONAI, medpy and the official BraTS package.

:func:`benchmark_metrics` times all 12 metrics per BraTS-sized case (240 x 240 x 155, a tumour of
about 100k voxels and a prediction shifted and eroded from it: see
:func:`~cascadeseg.bench.inputs.make_benchmark_case`) with each library on one thread (warm-up,
repeats, median) and reports the largest disagreement of the values.
:func:`benchmark_lesions` times the whole evaluation (global + lesion-wise) of multi-lesion cases
beside the official ``BraTS-evaluation`` package. :func:`metrics_suite` records their rows and
the folder evaluation's rate.

Note on HD95: MONAI's ``compute_hausdorff_distance(percentile=95)`` takes the maximum of the two
directed 95th percentiles, while cascadeseg, medpy and the official BraTS evaluation pool both
directions' distances; the reported MONAI HD95 disagreement measures that difference of
definition, not an error.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from cascadeseg.bench.inputs import (
    make_benchmark_case,
    make_lesion_benchmark_case,
    write_label_folders,
)
from cascadeseg.bench.rows import Suite, add_row, size_text
from cascadeseg.bench.timing import measure
from cascadeseg.data.labels import REGION_LABELS, REGIONS
from cascadeseg.evaluation.evaluate import evaluate
from cascadeseg.evaluation.lesion_eval import case_lesion_figures
from cascadeseg.evaluation.metrics import METRIC_NAMES, case_metrics

Runner = Callable[[np.ndarray, np.ndarray], Any]


def _monai_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]
) -> dict[str, float]:
    from monai.metrics import (  # optional: a peer library
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
    from medpy.metric import binary  # optional: a peer library

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


def _metric_libraries(spacing: tuple[float, ...]) -> tuple[dict[str, Runner], list[str]]:
    """The 12-metric functions of cascadeseg, MONAI and medpy (where installed), and notes."""
    libraries: dict[str, Runner] = {
        "cascadeseg": lambda p, r: case_metrics(p, r, spacing),
        "monai": lambda p, r: _monai_metrics(p, r, spacing),
    }
    notes = [
        "MONAI HD95 = max of the two directed 95th percentiles; cascadeseg/medpy/BraTS pool them"
    ]
    try:
        import medpy.metric  # noqa: F401  # optional: is medpy installed?

        libraries["medpy"] = lambda p, r: _medpy_metrics(p, r, spacing)
    except ImportError:
        notes.append("medpy not installed (pip install medpy): left out")
    return libraries, notes


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
        n_cases: cases to generate (see :func:`~cascadeseg.bench.inputs.make_benchmark_case`).
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    libraries, notes = _metric_libraries(spacing)
    seconds: dict[str, list[float]] = {name: [] for name in libraries}
    worst: dict[str, dict[str, float]] = {name: {} for name in libraries if name != "cascadeseg"}
    voxels = []
    try:
        for i in range(n_cases):
            pred, ref = make_benchmark_case(seed + i, shape)
            voxels.append(int(np.count_nonzero(ref)))
            values: dict[str, dict[str, float]] = {}
            for name, fn in libraries.items():
                timing = measure(functools.partial(fn, pred, ref), repeats=repeats)
                seconds[name].append(timing.median)
                values[name] = timing.value
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
# lesion-wise metrics beside the official package


def _official_evaluator() -> Any:
    try:
        from panoptica import Panoptica_Evaluator  # optional: the official package's engine
    except ImportError:
        return None
    config = files("brats_evaluation") / "configs" / "config_gli.yaml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Panoptica_Evaluator.load_from_config(str(config))


def _ours(pred: np.ndarray, ref: np.ndarray, rules: tuple[str, ...]) -> dict[str, float]:
    """The 12 global metrics and the lesion-wise figures under ``rules``."""
    out = case_metrics(pred, ref)
    out.update(
        case_lesion_figures(pred, ref, (1, 1, 1), rules=rules, ref_convention="brats2023")[0]
    )
    return out


def _lesion_runners(official: Any) -> tuple[dict[str, Runner], list[str]]:
    """The whole evaluations to time (cascadeseg's rule sets, the official package), and notes."""
    runners: dict[str, Runner] = {
        "cascadeseg (official rules)": lambda p, r: _ours(p, r, ("panoptica",)),
    }
    notes = []
    try:
        import monai.metrics.utils  # noqa: F401  # optional: the brats2023 rules need it

        runners["cascadeseg (both rule sets)"] = lambda p, r: _ours(
            p, r, ("panoptica", "brats2023")
        )
    except ImportError:
        notes.append("MONAI not importable: the brats2023 rules (surfel areas) left out")
    if official is not None:
        runners["BraTS-evaluation (panoptica)"] = lambda p, r: official.evaluate(
            p, r, voxelspacing=(1.0, 1.0, 1.0), verbose=False
        )
    else:
        notes.append("BraTS-evaluation not installed (pip install 'cascadeseg[oracle]'): left out")
    return runners, notes


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
    official = _official_evaluator()
    runners, notes = _lesion_runners(official)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    counts, worst = [], {"tp_fp_fn": 0.0, "dice": 0.0, "hd95": 0.0}
    for i in range(n_cases):
        pred, ref = make_lesion_benchmark_case(seed + i, shape, n_lesions)
        counts.append(int(ndimage.label(ref > 0, structure=np.ones((3, 3, 3)))[1]))
        values = {}
        for name, fn in runners.items():
            start = time.process_time()
            timing = measure(functools.partial(fn, pred, ref), repeats=repeats)
            cpu[name].append((time.process_time() - start) / (max(1, repeats) + 1))
            seconds[name].append(timing.median)
            values[name] = timing.value
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


# --------------------------------------------------------------------------------------------
# the suite


def metrics_suite(suite: Suite, *, device: str, quick: bool, peak: dict[str, float]) -> None:
    """All 12 BraTS metrics per case: cascadeseg vs MONAI vs medpy, the lesion-wise evaluation
    beside the official package, and folder evaluation.

    Target (issue 6): all 12 metrics of one 240 x 240 x 155 case in <= 0.3 s on one core.
    """
    shape = (48, 48, 32) if quick else (240, 240, 155)
    result = benchmark_metrics(n_cases=1 if quick else 3, shape=shape, repeats=1 if quick else 3)
    ours = result["seconds_per_case"]["cascadeseg"]
    limits = {
        "cascadeseg": "compute (distance transforms on the cropped region of interest)",
        "monai": "compute (distance transforms and surface extraction on the full grid)",
        "medpy": "compute (full-grid distance transforms, per region, in Python)",
    }
    for library in result["libraries"]:
        seconds = result["seconds_per_case"][library]
        details: dict[str, Any] = {"slower_than_cascadeseg": seconds / ours}
        for family, diff in result["max_disagreement"].get(library, {}).items():
            details[f"max_diff_{family}"] = diff
        add_row(
            suite,
            f"12 metrics, one {size_text(shape)} case, one core: {library}",
            seconds,
            "s",
            target=("<=", 0.3) if library == "cascadeseg" else None,
            limited_by=limits.get(library, "compute"),
            **details,
        )
    suite.notes.extend(result["notes"])
    _lesion_rows(suite, quick=quick)
    _folder_rows(suite, shape, n_cases=2 if quick else 4)


def _lesion_rows(suite: Suite, *, quick: bool) -> None:
    """Global + lesion-wise evaluation of a multi-lesion case, beside the official package.

    Target (issue 17): the whole evaluation of a 240 x 240 x 155 case with about 10 lesions in
    <= 0.5 s on one core (the official ``BraTS-evaluation`` package: about 6 s).
    """
    shape = (64, 64, 48) if quick else (240, 240, 155)
    result = benchmark_lesions(
        n_cases=1 if quick else 3,
        shape=shape,
        n_lesions=4 if quick else 10,
        repeats=1 if quick else 3,
    )
    lesions = int(np.median(result["reference_lesions_wt"]))
    ours = result["seconds_per_case"]["cascadeseg (official rules)"]
    for name, seconds in result["seconds_per_case"].items():
        official = name.startswith("BraTS-evaluation")
        add_row(
            suite,
            f"global + lesion-wise, one {size_text(shape)} case with {lesions} lesions, one core: "
            f"{name}",
            seconds,
            "s",
            target=None if official else ("<=", 0.5),
            limited_by="compute (connected components, matching, per-lesion distances)",
            cpu_s=result["cpu_seconds_per_case"][name],
            slower_than_cascadeseg=seconds / ours,
            **{f"max_diff_{k}": v for k, v in result["max_disagreement"].items() if official},
        )
    suite.notes.extend(result["notes"])


def _folder_rows(suite: Suite, shape: tuple[int, int, int], *, n_cases: int) -> None:
    """Cases per second of ``evaluate`` over a folder, with 1 and 2 worker processes."""
    with tempfile.TemporaryDirectory(prefix="cascadeseg_bench_eval_") as tmp:
        pred_dir, ref_dir = write_label_folders(Path(tmp), n_cases, shape)
        rates = {}
        for workers in (1, 2):
            out = Path(tmp) / f"out{workers}"
            run = functools.partial(
                evaluate, pred_dir, ref_dir, out, workers=workers, progress=False, print_table=False
            )
            rates[workers] = n_cases / measure(run, repeats=1, warmup=0).median
    add_row(
        suite,
        f"evaluate a folder of {n_cases} {size_text(shape)} cases, 2 workers",
        rates[2],
        "cases/s",
        limited_by="compute (metrics) + I/O (gzip decompression); 2 processes",
        one_worker_cases_per_s=rates[1],
        speedup_2_workers=rates[2] / rates[1],
    )
