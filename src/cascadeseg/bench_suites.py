"""The benchmark suites (data, metrics, inference, training) run by :mod:`cascadeseg.benchmark`.

Each suite calls the measuring functions that live next to the code they measure
(``data.synth.benchmark_synth``, ``data.preprocess.benchmark_preprocess``,
``losses.lws.benchmark_lws``, ``evaluation.bench.benchmark_metrics``,
``models.bench.benchmark_forward`` / ``precision_agreement``,
``training.bench.benchmark_training_step``) and the public API (``evaluate``, ``predict``,
``CropDataset3D``, the ONNX export), and records one row per figure with :func:`add_row`:
the headline ``value`` and its ``unit``, the ``target`` an issue sets (``"<= 3 s"``) and whether
it is met, what ``limited_by`` the figure (compute, memory bandwidth, Python overhead, I/O), and
details. ``quick=True`` shrinks every size, width and repeat count so that all four suites run
in seconds (the smoke test in ``tests/test_benchmark.py``); its figures mean nothing.

Whole-brain inputs are the two-stage paper's inference crop, 160 x 192 x 128 voxels; the 2D
CU-Net processes such a case as 128 axial 160 x 192 slices (timed on a batch of slices and
scaled to the whole case). Networks have random weights: speed does not depend on them, but
the fp32-vs-bf16 Dice is pessimistic (untrained outputs sit near the 0.5 threshold), so the
maximum difference of the probabilities is reported beside it.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cascadeseg.benchmark import Suite, timed
from cascadeseg.runtime import native_bf16

#: Whole-brain crop of the two-stage paper's inference (Myronenko's 160 x 192 x 128).
WHOLE_BRAIN = (160, 192, 128)
#: Tiny sizes and networks of ``--quick`` (8 is a multiple of every quick network's stride).
QUICK_3D = (8, 8, 8)
QUICK_WIDTH = 8
#: ``--quick`` synthetic cases: 30 x 30 x 19 voxels (the generator's grid x 0.125).
QUICK_SYNTH_SCALE = 0.125
QUICK_ARGS: dict[str, dict[str, Any]] = {
    "two_stage": {"base_width": QUICK_WIDTH, "blocks": (1, 1, 1)},
    "unet3d": {"base_width": QUICK_WIDTH, "depth": 2},
    "cunet": {"base_width": QUICK_WIDTH, "depth": 2},
}
#: Paper widths are the registry defaults; ``--quick`` overrides ``base_width``.
MODELS_3D = ("two_stage", "unet3d")
MODELS_2D = ("cunet",)


# --------------------------------------------------------------------------------------------
# rows


def add_row(
    suite: Suite,
    what: str,
    value: float,
    unit: str,
    *,
    limited_by: str,
    target: tuple[str, float] | None = None,
    target_unit: str | None = None,
    **details: Any,
) -> None:
    """Record one figure: ``value`` in ``unit``, an optional target ``("<=", 3.0)`` and notes.

    The row gets ``target`` as text (``"<= 3 s"``) and ``meets_target`` (``None`` without a
    target). Details must be scalars (they become ``key=value`` text in the tables).
    """
    row: dict[str, Any] = {"value": float(value), "unit": unit}
    if target is not None:
        op, bound = target
        row["target"] = f"{op} {bound:g} {target_unit or unit}".strip()
        row["meets_target"] = bool(value <= bound if op == "<=" else value >= bound)
    else:
        row["target"] = ""
        row["meets_target"] = None
    row["limited_by"] = limited_by
    row.update(details)
    suite.add(what, **row)


def conv_limit(fraction_of_peak: float, *, device: str = "cpu") -> str:
    """What limits a network's speed, judged by its achieved share of the matmul peak.

    Convolutions are matrix products; a network far below the matmul peak spends its time in
    FLOP-free passes over the activations (GroupNorm/BatchNorm, ReLU, additions, padding,
    layout conversions), which are limited by memory bandwidth, or (small inputs on a GPU) in
    kernel launches.
    """
    if fraction_of_peak >= 0.5:
        return "compute (convolutions near the matmul peak)"
    if fraction_of_peak >= 0.15:
        return "compute + memory bandwidth (normalisation/activation passes between convolutions)"
    if device == "cuda":
        return "memory bandwidth and kernel launches (normalisation, activations, small kernels)"
    return "memory bandwidth (normalisation/activation passes; convolution kernel efficiency)"


# --------------------------------------------------------------------------------------------
# shared synthetic data


@dataclass(frozen=True)
class SyntheticData:
    """One synthetic case on disk and its cached preprocessed version.

    Attributes:
        root: dataset folder (``brats2021`` layout, one case).
        ref: the case's :class:`~cascadeseg.data.layouts.CaseRef`.
        pre: the preprocessed case (memory-mapped cache entry, as training reads it).
    """

    root: Path
    ref: Any
    pre: Any


_DATA: dict[bool, SyntheticData] = {}


def synthetic_data(quick: bool) -> SyntheticData:
    """One synthetic case written once per process (240x240x155, or 30x30x19 when quick)."""
    if quick not in _DATA:
        from cascadeseg.data.cache import PreprocessCache
        from cascadeseg.data.layouts import discover_cases
        from cascadeseg.data.synth import SynthConfig, synthesize_dataset

        tmp = Path(tempfile.mkdtemp(prefix="cascadeseg_bench_data_"))
        atexit.register(shutil.rmtree, tmp, True)
        config = SynthConfig(shape_scale=QUICK_SYNTH_SCALE if quick else 1.0)
        root = tmp / "dataset"
        synthesize_dataset(root, 1, seed=0, layout="brats2021", progress=False, config=config)
        ref = discover_cases(root)[0]
        pre = PreprocessCache(tmp / "cache").get(ref)
        _DATA[quick] = SyntheticData(root=root, ref=ref, pre=pre)
    return _DATA[quick]


def case_input(pre: Any, size: Sequence[int], *, batch: int = 1) -> torch.Tensor:
    """A network input cut from a preprocessed case, centred, zero-padded where it is smaller.

    3 sides: ``(1, 4, X, Y, Z)``. 2 sides: the ``batch`` middle axial slices ``(batch, 4, H, W)``.
    """
    from cascadeseg.data.augment import crop

    image = np.asarray(pre.image, dtype=np.float32)
    if len(size) == 3:
        start = [(s - t) // 2 for s, t in zip(image.shape[1:], size)]
        return torch.from_numpy(crop(image, start, size))[None]
    depth = image.shape[-1]
    z0 = max(0, depth // 2 - batch // 2)
    slices = np.moveaxis(image[..., z0 : z0 + batch], -1, 0)  # (b, 4, X, Y)
    start = [(s - t) // 2 for s, t in zip(slices.shape[2:], size)]
    out = crop(slices, start, size)
    if out.shape[0] < batch:  # fewer slices than asked for: repeat them
        out = np.concatenate([out] * math.ceil(batch / out.shape[0]))[:batch]
    return torch.from_numpy(np.ascontiguousarray(out))


def _cpu_recipe(name: str, fallback_size: Sequence[int], fallback_width: int) -> dict[str, Any]:
    """Patch size, model overrides and batch of the shipped ``<name>_cpu`` recipe.

    Falls back to ``fallback_size`` / ``base_width=fallback_width`` / batch 1 (3D) or 8 (2D)
    when the recipe is not shipped.
    """
    from cascadeseg.config import load_config
    from cascadeseg.errors import ConfigError

    try:
        cfg = load_config(f"{name}_cpu")
    except ConfigError:
        dims = len(fallback_size)
        return {
            "size": tuple(fallback_size),
            "args": {"base_width": fallback_width},
            "batch": 1 if dims == 3 else 8,
            "source": "built-in fallback (no shipped CPU recipe)",
        }
    dims = len(fallback_size)
    return {
        "size": tuple(int(s) for s in cfg.data.patch_size[:dims]),
        "args": dict(cfg.model.args),
        "batch": int(cfg.train.batch_size),
        "source": f"{name}_cpu.yaml",
    }


# --------------------------------------------------------------------------------------------
# device-generic forward timing (models.bench.benchmark_forward is CPU-only and takes registry
# names; this times any module, MONAI's peers and CUDA included, the same way: warm-up, median)


def _autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_seconds(
    model: nn.Module,
    x: torch.Tensor,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    device: str = "cpu",
    repeats: int = 3,
    warmup: int = 1,
) -> float:
    """Median seconds of one eval-mode forward of ``model`` on ``x`` (moved to ``device``).

    ``precision`` is ``fp32`` or ``bf16`` (autocast); ``channels_last`` uses the
    ``channels_last(_3d)`` memory format for weights and input.
    """
    model = model.eval().to(device)
    x = x.to(device)
    if channels_last:
        fmt = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
        model = model.to(memory_format=fmt)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=fmt)

    def run() -> None:
        with torch.inference_mode(), _autocast(device, precision):
            model(x)

    return timed(run, repeats=repeats, warmup=warmup)["median_s"]


def segmentation_agreement(
    model: nn.Module, x: torch.Tensor, *, device: str = "cpu", threshold: float = 0.5
) -> dict[str, float]:
    """Dice between fp32 and bf16-autocast segmentations ``[WT, TC, ET]`` of ``x``, and the
    largest absolute difference of the region probabilities (``max_abs_diff``)."""
    from cascadeseg.models.outputs import region_probabilities

    model = model.eval().to(device)
    x = x.to(device)
    kind = str(model.output_kind)
    with torch.inference_mode():
        ref = region_probabilities(model(x), kind).float()
        with _autocast(device, "bf16"):
            other = region_probabilities(model(x), kind).float()
    dice = {}
    for i, region in enumerate(("WT", "TC", "ET")):
        a, b = ref[:, i] >= threshold, other[:, i] >= threshold
        total = int(a.sum()) + int(b.sum())
        dice[region] = 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
    dice["mean"] = sum(dice.values()) / 3
    dice["max_abs_diff"] = float((ref - other).abs().max())
    return dice


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# data


def data_suite(suite: Suite, *, device: str, quick: bool, peak: dict[str, float]) -> None:
    """Synthesis, reading + preprocessing, cache loads, 3D crops + augmentation, LWS weights.

    Targets (issue 2): synth <= 3 s per case; read + validate + preprocess <= 1.5 s; cache
    load <= 0.1 s (240 x 240 x 155 cases).
    """
    from cascadeseg.data.preprocess import benchmark_preprocess
    from cascadeseg.data.synth import SynthConfig, benchmark_synth
    from cascadeseg.losses.lws import benchmark_lws

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

    data = synthetic_data(quick)
    pre = benchmark_preprocess(data.ref, repeats=repeats)
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

    recipe = _cpu_recipe("two_stage", (64, 64, 64), 8)
    sizes = [(4, 4, 4), QUICK_3D] if quick else [(128, 128, 128), recipe["size"]]
    for size in dict.fromkeys(tuple(s) for s in sizes):
        rate = crop_rate(data.pre, size, items=2 if quick else 20, repeats=repeats)
        label = "x".join(str(s) for s in size)
        add_row(
            suite,
            f"3D crop + augmentation {label} (one process)",
            rate,
            "items/s",
            limited_by="memory bandwidth (copying, flipping and scaling a 4-channel crop)",
            note="quick"
            if quick
            else ("paper size" if size == (128, 128, 128) else f"CPU recipe ({recipe['source']})"),
        )

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


def crop_rate(pre: Any, size: Sequence[int], *, items: int = 20, repeats: int = 3) -> float:
    """Items per second of :class:`~cascadeseg.data.datasets.CropDataset3D` (augmented) over one
    preprocessed case, in this process (a loader worker's rate)."""
    from cascadeseg.data.datasets import CropDataset3D

    dataset = CropDataset3D([pre], patch_size=size, augment=True, samples_per_epoch=items)

    def run() -> None:
        for i in range(items):
            dataset[i]

    return items / timed(run, repeats=repeats, warmup=1)["median_s"]


# --------------------------------------------------------------------------------------------
# metrics


def metrics_suite(suite: Suite, *, device: str, quick: bool, peak: dict[str, float]) -> None:
    """All 12 BraTS metrics per case: cascadeseg vs MONAI vs medpy, and folder evaluation.

    Target (issue 6): all 12 metrics of one 240 x 240 x 155 case in <= 0.3 s on one core.
    """
    from cascadeseg.evaluation.bench import benchmark_metrics

    shape = (48, 48, 32) if quick else (240, 240, 155)
    result = benchmark_metrics(n_cases=1 if quick else 3, shape=shape, repeats=1 if quick else 3)
    ours = result["seconds_per_case"]["cascadeseg"]
    limits = {
        "cascadeseg": "compute (distance transforms on the cropped region of interest)",
        "monai": "compute (distance transforms and surface extraction on the full grid)",
        "medpy": "compute (full-grid distance transforms, per region, in Python)",
    }
    grid = "x".join(str(s) for s in shape)
    for library in result["libraries"]:
        seconds = result["seconds_per_case"][library]
        details: dict[str, Any] = {"slower_than_cascadeseg": seconds / ours}
        for family, diff in result["max_disagreement"].get(library, {}).items():
            details[f"max_diff_{family}"] = diff
        add_row(
            suite,
            f"12 metrics, one {grid} case, one core: {library}",
            seconds,
            "s",
            target=("<=", 0.3) if library == "cascadeseg" else None,
            limited_by=limits.get(library, "compute"),
            **details,
        )
    for note in result["notes"]:
        suite.notes.append(note)
    _lesion_rows(suite, quick=quick)

    n_cases = 2 if quick else 4
    with tempfile.TemporaryDirectory(prefix="cascadeseg_bench_eval_") as tmp:
        pred_dir, ref_dir = _write_label_folders(Path(tmp), n_cases, shape)
        rates = {}
        for workers in (1, 2):
            out = Path(tmp) / f"out{workers}"

            def run(out: Path = out, workers: int = workers) -> None:
                from cascadeseg.evaluation.evaluate import evaluate

                evaluate(pred_dir, ref_dir, out, workers=workers, progress=False, print_table=False)

            rates[workers] = n_cases / timed(run, repeats=1, warmup=0)["median_s"]
    add_row(
        suite,
        f"evaluate a folder of {n_cases} {grid} cases, 2 workers",
        rates[2],
        "cases/s",
        limited_by="compute (metrics) + I/O (gzip decompression); 2 processes",
        one_worker_cases_per_s=rates[1],
        speedup_2_workers=rates[2] / rates[1],
    )


def _lesion_rows(suite: Suite, *, quick: bool) -> None:
    """Global + lesion-wise evaluation of a multi-lesion case, beside the official package.

    Target (issue 17): the whole evaluation of a 240 x 240 x 155 case with about 10 lesions in
    <= 0.5 s on one core (the official ``BraTS-evaluation`` package: about 6 s).
    """
    from cascadeseg.evaluation.bench import benchmark_lesions

    shape = (64, 64, 48) if quick else (240, 240, 155)
    result = benchmark_lesions(
        n_cases=1 if quick else 3,
        shape=shape,
        n_lesions=4 if quick else 10,
        repeats=1 if quick else 3,
    )
    grid = "x".join(str(s) for s in shape)
    lesions = int(np.median(result["reference_lesions_wt"]))
    ours = result["seconds_per_case"]["cascadeseg (official rules)"]
    for name, seconds in result["seconds_per_case"].items():
        official = name.startswith("BraTS-evaluation")
        add_row(
            suite,
            f"global + lesion-wise, one {grid} case with {lesions} lesions, one core: {name}",
            seconds,
            "s",
            target=None if official else ("<=", 0.5),
            limited_by="compute (connected components, matching, per-lesion distances)",
            cpu_s=result["cpu_seconds_per_case"][name],
            slower_than_cascadeseg=seconds / ours,
            **{f"max_diff_{k}": v for k, v in result["max_disagreement"].items() if official},
        )
    suite.notes.extend(result["notes"])


def _write_label_folders(root: Path, n: int, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """``n`` prediction/reference label maps (BraTS 2021 labels) in two flat folders."""
    from cascadeseg.data.labels import from_internal
    from cascadeseg.data.nifti import save_nifti
    from cascadeseg.evaluation.bench import make_benchmark_case

    pred_dir, ref_dir = root / "pred", root / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    radius = min(30.0, min(shape) / 5)
    for i in range(n):
        pred, ref = make_benchmark_case(i, shape, radius=radius)
        case_id = f"BraTS2021_{i:05d}"
        save_nifti(
            from_internal(pred, "brats2021"), np.eye(4), None, pred_dir / f"{case_id}.nii.gz"
        )
        save_nifti(from_internal(ref, "brats2021"), np.eye(4), None, ref_dir / f"{case_id}.nii.gz")
    return pred_dir, ref_dir


# --------------------------------------------------------------------------------------------
# inference


def _overrides(name: str, quick: bool) -> dict[str, Any]:
    """Constructor overrides: none (paper width) or the tiny ``--quick`` network."""
    return dict(QUICK_ARGS[name]) if quick else {}


def inference_suite(suite: Suite, *, device: str, quick: bool, peak: dict[str, float]) -> None:
    """Whole-brain forward of two_stage, unet3d and cunet at paper width: fp32, channels-last and
    bf16, GFLOP/s against the matmul peak, fp32-vs-bf16 agreement, ONNX Runtime, MONAI's
    SegResNet as a peer, and the end-to-end prediction of one case from files.

    Targets (issues 3 and 5): two_stage bf16 >= 1.8x faster than fp32, Dice >= 0.99 between the
    two, <= 20 s per case on the 2-core CPU; on an H100 one pass <= 0.15 s and 8-flip TTA <= 1 s
    per case, data loading included.
    """
    from cascadeseg.models.bench import build_meta_model, count_flops

    repeats = 1 if quick else 3
    size3 = QUICK_3D if quick else WHOLE_BRAIN
    has_bf16 = native_bf16(device)
    if not has_bf16:
        suite.notes.append(
            f"bf16 is not native on this {device.upper()} (no AVX-512 BF16/AMX on a CPU): the "
            "predictor runs fp32 there; bf16 is timed on a small probe only to show the cost"
        )
    data = synthetic_data(quick)
    for name in (*MODELS_3D, *MODELS_2D):
        dims = 3 if name in MODELS_3D else 2
        overrides = _overrides(name, quick)
        # 2D: a batch of axial slices, scaled to the case's slice count.
        batch = 1 if dims == 3 else (2 if quick else (16 if device == "cuda" else 4))
        size = size3 if dims == 3 else size3[:2]
        per_case = 1.0 if dims == 3 else size3[2] / batch
        flops = count_flops(build_meta_model(name, **overrides), size, batch=batch)
        _model_rows(
            suite,
            name,
            size=size,
            batch=batch,
            per_case=per_case,
            flops=flops,
            overrides=overrides,
            device=device,
            repeats=repeats,
            peak=peak,
            native_bf16=has_bf16,
            image=case_input(data.pre, size, batch=batch),
            quick=quick,
        )
        _free(device)
    _segresnet_rows(suite, size3, device=device, repeats=repeats, peak=peak, quick=quick)
    _free(device)
    _onnx_row(suite, size3, device=device, repeats=repeats, quick=quick)
    _free(device)
    _end_to_end_rows(suite, data, device=device, quick=quick, native_bf16=has_bf16)


def _forward(
    name: str,
    size: Sequence[int],
    *,
    precision: str,
    channels_last: bool,
    overrides: dict[str, Any],
    batch: int,
    device: str,
    repeats: int,
) -> float:
    """Seconds of one forward: ``models.bench.benchmark_forward`` on the CPU, else
    :func:`forward_seconds` (the same method on another device)."""
    if device == "cpu":
        from cascadeseg.models.bench import benchmark_forward

        result = benchmark_forward(
            name,
            size,
            precision,
            repeats,
            overrides=overrides,
            channels_last=channels_last,
            batch=batch,
        )
        return float(result["seconds"])
    from cascadeseg.models import build_model

    torch.manual_seed(0)
    model = build_model(name, **overrides)
    x = torch.randn((batch, int(getattr(model, "in_channels", 4)), *size))
    return forward_seconds(
        model, x, precision=precision, channels_last=channels_last, device=device, repeats=repeats
    )


def _model_rows(
    suite: Suite,
    name: str,
    *,
    size: Sequence[int],
    batch: int,
    per_case: float,
    flops: int,
    overrides: dict[str, Any],
    device: str,
    repeats: int,
    peak: dict[str, float],
    native_bf16: bool,
    image: torch.Tensor,
    quick: bool,
) -> None:
    dims = len(size)
    shape = "x".join(str(s) for s in size)
    what = f"{name} forward, {shape}" + (f" x {batch} slices" if dims == 2 else "")
    scale = f", scaled x{per_case:g} to a whole case" if per_case != 1 else ""
    is_two_stage = name == "two_stage"
    common: dict[str, Any] = {
        "overrides": overrides,
        "batch": batch,
        "device": device,
        "repeats": repeats,
    }

    def figures(seconds: float, precision: str) -> dict[str, Any]:
        achieved = flops / seconds / 1e9
        share = achieved / peak[f"matmul_{precision}_gflops"]
        if device == "cuda" and precision == "fp32" and "matmul_tf32_gflops" in peak:
            # cuDNN convolutions use TF32 by default (torch.backends.cudnn.allow_tf32).
            share = achieved / peak["matmul_tf32_gflops"]
        return {
            "gflops_per_s": achieved,
            "fraction_of_peak": share,
            "limit": conv_limit(share, device=device),
        }

    fp32_s = _forward(name, size, precision="fp32", channels_last=False, **common)
    f = figures(fp32_s, "fp32")
    # Issue 5's 20 s is for bf16 "where the CPU supports it"; where it does not, fp32 is what
    # the predictor runs, so the target is shown against fp32.
    fp32_target = is_two_stage and device == "cpu" and not native_bf16 and not quick
    add_row(
        suite,
        f"{what}: fp32",
        fp32_s * per_case,
        "s/case",
        target=("<=", 20.0) if fp32_target else None,
        limited_by=f["limit"],
        gflops_per_s=f["gflops_per_s"],
        fraction_of_peak=f["fraction_of_peak"],
        gflop_per_case=flops * per_case / 1e9,
        note=f"random input{scale}",
    )
    cl_s = _forward(name, size, precision="fp32", channels_last=True, **common)
    f = figures(cl_s, "fp32")
    add_row(
        suite,
        f"{what}: fp32 channels-last",
        cl_s * per_case,
        "s/case",
        limited_by=f["limit"],
        gflops_per_s=f["gflops_per_s"],
        fraction_of_peak=f["fraction_of_peak"],
        speedup_vs_fp32=fp32_s / cl_s,
        helps=cl_s < fp32_s * 0.95,
    )
    if native_bf16 or quick:
        bf16_s = _forward(name, size, precision="bf16", channels_last=False, **common)
        f = figures(bf16_s, "bf16")
        speedup = fp32_s / bf16_s
        agreement = _agreement(name, overrides, image, device)
        add_row(
            suite,
            f"{what}: bf16 autocast",
            bf16_s * per_case,
            "s/case",
            target=("<=", 20.0) if is_two_stage and device == "cpu" else None,
            limited_by=f["limit"],
            gflops_per_s=f["gflops_per_s"],
            fraction_of_peak=f["fraction_of_peak"],
        )
        add_row(
            suite,
            f"{what}: bf16 speed-up over fp32",
            speedup,
            "x",
            target=(">=", 1.8) if is_two_stage else None,
            limited_by=f["limit"],
        )
        details: dict[str, Any] = {
            "dice_wt": agreement["WT"],
            "dice_tc": agreement["TC"],
            "dice_et": agreement["ET"],
        }
        if "max_abs_diff" in agreement:
            details["max_abs_diff"] = agreement["max_abs_diff"]
        add_row(
            suite,
            f"{what}: Dice fp32 vs bf16 (mean of WT, TC, ET)",
            agreement["mean"],
            "",
            target=(">=", 0.99),
            limited_by="numerics (bf16 has an 8-bit mantissa; random weights: pessimistic)",
            **details,
        )
    elif is_two_stage:
        # bf16 without native kernels falls back to reference kernels: time a 16^3 probe only.
        probe = (16, 16, 16)
        p32 = _forward(
            name, probe, precision="fp32", channels_last=False, **{**common, "repeats": 1}
        )
        p16 = _forward(
            name, probe, precision="bf16", channels_last=False, **{**common, "repeats": 1}
        )
        add_row(
            suite,
            f"{name} forward, 16x16x16 probe: bf16 speed-up over fp32",
            p32 / p16,
            "x",
            target=(">=", 1.8),
            limited_by="no native bf16 kernels on this CPU (reference fallback)",
            fp32_s=p32,
            bf16_s=p16,
        )


def _agreement(
    name: str, overrides: dict[str, Any], image: torch.Tensor, device: str
) -> dict[str, float]:
    """fp32-vs-bf16 agreement on a real (synthetic) case image, random weights."""
    from cascadeseg.models import build_model

    torch.manual_seed(0)
    model = build_model(name, **overrides).eval()
    if device == "cpu":
        from cascadeseg.models.bench import precision_agreement

        return precision_agreement(model, image, "bf16")
    return segmentation_agreement(model, image, device=device)


def _segresnet_rows(
    suite: Suite,
    size: Sequence[int],
    *,
    device: str,
    repeats: int,
    peak: dict[str, float],
    quick: bool,
) -> None:
    """MONAI's SegResNet (Myronenko 2018: blocks 1, 2, 2, 4) at stage 1's and stage 2's widths:
    the same architecture family as the two stages, as a peer reference."""
    try:
        from monai.networks.nets import SegResNet
    except ImportError:
        suite.notes.append("monai not installed: SegResNet peer left out")
        return
    from cascadeseg.models.bench import count_flops

    widths = (QUICK_WIDTH,) if quick else (16, 32)
    for width in widths:
        torch.manual_seed(0)
        model = SegResNet(
            spatial_dims=3,
            init_filters=width,
            in_channels=4,
            out_channels=3,
            blocks_down=(1, 1, 1) if quick else (1, 2, 2, 4),
            blocks_up=(1, 1) if quick else (1, 1, 1),
        )
        flops = count_flops(model, size)
        x = torch.randn((1, 4, *size))
        seconds = forward_seconds(model, x, device=device, repeats=repeats)
        achieved = flops / seconds / 1e9
        share = achieved / peak.get("matmul_tf32_gflops", peak["matmul_fp32_gflops"])
        add_row(
            suite,
            f"peer: MONAI SegResNet init_filters={width}, {'x'.join(map(str, size))}: fp32",
            seconds,
            "s/case",
            limited_by=conv_limit(share, device=device),
            gflops_per_s=achieved,
            fraction_of_peak=share,
            gflop_per_case=flops / 1e9,
            note="two_stage = stage 1 (16) + stage 2 (32) of this family",
        )
        del model, x
        _free(device)


def _onnx_row(suite: Suite, size: Sequence[int], *, device: str, repeats: int, quick: bool) -> None:
    """two_stage through ONNX Runtime (the ``--backend onnx`` path), against PyTorch fp32."""
    from cascadeseg.inference.export import export_onnx_bytes
    from cascadeseg.inference.loading import OnnxNetwork
    from cascadeseg.models import build_model
    from cascadeseg.models.bench import count_flops

    torch.manual_seed(0)
    model = build_model("two_stage", **_overrides("two_stage", quick)).eval()
    network = OnnxNetwork(export_onnx_bytes(model), device)
    x = torch.randn((1, 4, *size))
    seconds = timed(lambda: network(x), repeats=repeats, warmup=1)["median_s"]
    with torch.inference_mode():
        from cascadeseg.models.outputs import region_probabilities

        reference = region_probabilities(model(x), "regions").float()
    diff = float((reference - network(x).float()).abs().max())
    flops = count_flops(model, size)
    add_row(
        suite,
        f"two_stage forward, {'x'.join(map(str, size))}: ONNX Runtime fp32",
        seconds,
        "s/case",
        limited_by="compute (ONNX Runtime convolutions)",
        gflops_per_s=flops / seconds / 1e9,
        provider=network.session.get_providers()[0],
        max_abs_diff_vs_torch=diff,
    )


def _end_to_end_rows(
    suite: Suite, data: SyntheticData, *, device: str, quick: bool, native_bf16: bool
) -> None:
    """Whole-case prediction with ``inference.bench.benchmark_inference``: from the case's files
    (read + preprocess + network + restore geometry + threshold) and, on CUDA, the network part
    alone on a preprocessed brain (pad, passes, crop, copy back), one pass and 8-flip TTA."""
    from cascadeseg.inference.bench import BRAIN_CROP_SIZE, benchmark_inference

    on_gpu = device == "cuda"
    # A CPU pass at paper width takes tens of seconds: one timed run after the forwards above
    # warmed the kernels. On CUDA: one warm-up (cuDNN autotuning), median of 3.
    warmup, repeats = (0, 1) if quick or not on_gpu else (1, 3)
    common: dict[str, Any] = {
        "device": device,
        "model_args": _overrides("two_stage", quick),
        "repeats": repeats,
        "warmup": warmup,
        "compare_fp32": False,  # agreement is measured above, on the forward alone
        "matmul_size": 256 if quick else (8192 if on_gpu else 2048),
    }
    passes = [("one pass", False, 0.15)] + ([("8-flip TTA", True, 1.0)] if on_gpu else [])
    for label, tta, bound in passes:
        result = benchmark_inference(
            "two_stage", precision="bf16", tta=tta, case=data.root, **common
        )
        precision = result["precision_used"]
        add_row(
            suite,
            f"predict one case from files (two_stage, {precision}): {label}",
            result["seconds_median"],
            "s/case",
            # Issue 5: "per case on an H100, data loading included".
            target=("<=", bound) if on_gpu else None,
            limited_by="network compute + reading (gzip) and preprocessing the case",
            size="x".join(map(str, result["size"])),
            network_size="x".join(map(str, result.get("network_size", result["size"]))),
            gflops_per_s=result["gflops_per_s"],
            note="read + preprocess + network + restore + threshold; GFLOP/s: the network's "
            "FLOPs on its input (the brain crop) over the whole time",
        )
        if not on_gpu:
            continue
        size = QUICK_3D if quick else BRAIN_CROP_SIZE
        result = benchmark_inference("two_stage", size=size, precision="bf16", tta=tta, **common)
        share = result["fraction_of_peak"]
        add_row(
            suite,
            f"predict, network part only (two_stage, {result['precision_used']}, "
            f"{'x'.join(map(str, size))} brain crop in memory): {label}",
            result["seconds_median"],
            "s/case",
            limited_by=conv_limit(share, device=device),
            gflops_per_s=result["gflops_per_s"],
            fraction_of_peak=share,
            channels_last=result.get("channels_last", ""),
        )
        _free(device)


# --------------------------------------------------------------------------------------------
# training


def _demo_recipe_step_rows(suite: Suite, *, quick: bool, warmup: int, repeats: int) -> None:
    """The demo's own training step (``two_stage_cpu``: its crop, batch and widths, channels-last)
    in fp32 and, where the CPU has native bf16, in bf16: whether bf16 pays at the demo's widths.

    Measured on an AVX512-BF16 EPYC it did not (the casts and the fp32 GroupNorm outweigh the
    faster convolutions at 8 channels), so the recipe pins fp32; this row shows it on any CPU.
    """
    from cascadeseg.training.bench import benchmark_training_step

    recipe = _cpu_recipe("two_stage", (48, 48, 48), 8)
    size = QUICK_3D if quick else recipe["size"]
    args = _overrides("two_stage", quick) if quick else recipe["args"]
    batch = 2 if quick else recipe["batch"]
    shape = "x".join(map(str, size))
    seconds: dict[str, float] = {}
    for precision in ("fp32", "bf16") if native_bf16("cpu") else ("fp32",):
        result = benchmark_training_step(
            "two_stage",
            size,
            precision=precision,
            batch=batch,
            device="cpu",
            model_args=args,
            warmup=warmup,
            repeats=max(repeats, 3),
            channels_last=True,
        )
        seconds[precision] = result["s_per_iter"]
        add_row(
            suite,
            f"train the demo recipe's step ({recipe['source']}: two_stage {shape} batch {batch}, "
            f"channels-last), {precision}: time",
            result["s_per_iter"],
            "s/it",
            limited_by="compute (forward + backward) and, at 8 channels, memory-bound "
            "normalisation and activations",
            params=result["params"],
        )
    if "bf16" in seconds:
        add_row(
            suite,
            "train the demo recipe's step: bf16 speed-up over fp32",
            seconds["fp32"] / seconds["bf16"],
            "x",
            limited_by="autocast casts and fp32 GroupNorm against faster bf16 convolutions",
            note="below 1: bf16 is slower at the demo's widths, so two_stage_cpu pins fp32",
        )


def training_suite(suite: Suite, *, device: str, quick: bool, peak: dict[str, float]) -> None:
    """Seconds per iteration and peak memory, with and without gradient checkpointing.

    CPU: the CPU recipes' widths at 128^3 (two_stage, unet3d) and the CU-Net recipe's slices.
    CUDA: paper widths, bf16. Targets (issue 4, H100): <= 0.25 s per iteration with bf16, peak
    memory <= 8 GB with checkpointing.
    """
    from cascadeseg.training.bench import benchmark_training_step

    on_gpu = device == "cuda"
    precision = "bf16" if native_bf16(device) else "fp32"
    warmup, repeats = (1, 1) if quick else ((3, 10) if on_gpu else (1, 3))
    step_s: dict[str, float] = {}
    for name in ("two_stage", "unet3d", "cunet"):
        dims = 2 if name == "cunet" else 3
        if quick:
            size: tuple[int, ...] = QUICK_3D[:dims]
            args: dict[str, Any] = _overrides(name, quick)
            batch = 2 if dims == 2 else 1
        elif on_gpu:
            # Paper widths; 2D: batches of 16 brain-cropped axial slices.
            size, args = ((128, 128, 128) if dims == 3 else (160, 192)), {}
            batch = 1 if dims == 3 else 16
        else:
            fallback = (64, 64, 64) if dims == 3 else (160, 192)
            recipe = _cpu_recipe(name, fallback, 8 if dims == 3 else 16)
            # 3D: the recipe's width at the paper's 128^3 crop and batch 1 (issue 4); 2D: the
            # recipe's slices and batch.
            size, args = (128, 128, 128) if dims == 3 else recipe["size"], recipe["args"]
            batch = 1 if dims == 3 else recipe["batch"]
        for checkpointing in (False, True) if name == "two_stage" else (False,):
            result = benchmark_training_step(
                name,
                size,
                precision=precision,
                checkpointing=checkpointing,
                batch=batch,
                device=device,
                model_args=args,
                warmup=warmup,
                repeats=repeats,
            )
            shape = "x".join(map(str, size))
            width = args.get("base_width", "paper")
            what = f"train {name} {shape} batch {batch}, width {width}, {precision}" + (
                ", checkpointing" if checkpointing else ""
            )
            key = f"{name}{'_ckpt' if checkpointing else ''}"
            step_s[key] = result["s_per_iter"]
            add_row(
                suite,
                f"{what}: time",
                result["s_per_iter"],
                "s/it",
                target=("<=", 0.25) if on_gpu and name == "two_stage" else None,
                limited_by="compute (forward + backward convolutions)"
                + ("; recomputes each block's forward" if checkpointing else ""),
                params=result["params"],
            )
            memory_gb = result["peak_memory_mb"] / 1024
            add_row(
                suite,
                f"{what}: peak memory",
                memory_gb,
                "GB",
                target=("<=", 8.0) if on_gpu and name == "two_stage" and checkpointing else None,
                limited_by="activation memory (stored for backward)",
                memory_kind=result["memory_kind"],
            )
            _free(device)
    if not on_gpu:
        _demo_recipe_step_rows(suite, quick=quick, warmup=warmup, repeats=repeats)
    if "two_stage_ckpt" in step_s:
        add_row(
            suite,
            "two_stage: checkpointing time overhead",
            step_s["two_stage_ckpt"] / step_s["two_stage"],
            "x",
            limited_by="compute (one extra forward per residual block)",
        )
    # Does one loader worker keep up with the step? (issue 4: the GPU must not wait for data)
    data = synthetic_data(quick)
    crop = QUICK_3D if quick else (128, 128, 128)
    rate = crop_rate(data.pre, crop, items=2 if quick else 10, repeats=1 if quick else 3)
    needed = 1.0 / step_s["two_stage"]
    add_row(
        suite,
        f"loader workers needed to feed two_stage ({'x'.join(map(str, crop))} crops)",
        float(math.ceil(needed / rate)),
        "workers",
        limited_by="memory bandwidth of crops + augmentation vs the step time",
        crops_per_s_per_worker=rate,
        steps_per_s=needed,
    )
