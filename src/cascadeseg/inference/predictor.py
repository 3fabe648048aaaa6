"""Segment cases with one or more trained models: from files on disk to label maps on disk.

Per case (:func:`predict_case`):

1. **Preprocess** with the models' recipe (:func:`cascadeseg.data.preprocess.preprocess_case`):
   reorientation to RAS, the recipe's spacing (if it fixes one), brain crop, z-score.
2. **Network** per ensemble member:

   * 3D: the whole brain in one pass (two-stage paper, sec. 3.3: "we segment the whole brain region
     at once instead of using a sliding window"), padded to the network's multiple; a Gaussian
     sliding window takes over when memory is short (:class:`~.sliding.AdaptiveForward`).
   * 2D: axial slices in batches (with the recipe's slice context); CU-Net's whole-tumour branch
     gives WT and its substructure branch TC/ET inside WT
     (:func:`cascadeseg.models.outputs.region_probabilities`), fused with the non-brain mask
     (CU-Net paper, sec. 2.2: "we extract the non-brain mask in advance and fuse it with the
     outputs of branch1 and branch2").
3. **Flip TTA** (8 flips in 3D, 4 in-plane flips in 2D) and the **ensemble average** of the region
   probabilities ``[WT, TC, ET]``; the voxel-wise variance over all passes of all members is the
   uncertainty map. The snapshots of one run share the flips out by default (snapshot ``i`` with
   flip ``i``: 8 passes for 8 snapshots, as the two-stage paper does; ``ensemble_mode``,
   :func:`cascadeseg.inference.ensemble.flip_plan`).
4. **Restore** the probabilities to the exact source grid
   (:func:`cascadeseg.data.preprocess.restore_to_source`, linear where the recipe resampled, as
   nnU-Net resamples probabilities rather than labels), **threshold** at 0.5 with ET inside TC
   inside WT (:func:`cascadeseg.data.labels.probabilities_to_label`), and **post-process**
   (two-stage paper, sec. 3.4: ET below ``et_min_voxels`` becomes necrosis).

:func:`predict` runs that over a folder or four files and writes ``<case_id>.nii.gz`` (input's
header, affine and label convention), optional ``<case_id>_probabilities.nii.gz`` and
``<case_id>_uncertainty.nii.gz`` (4D float32, volumes ``[WT, TC, ET]``) and ``<case_id>.json``
(region volumes in mL and the settings used). A failing case is reported and skipped; existing
files are never overwritten without ``overwrite=True``; every file is written to a temporary name
in the output folder and renamed into place, so it appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cascadeseg import __version__
from cascadeseg.config import INFERENCE_PRECISIONS
from cascadeseg.data.case import Case, Meta
from cascadeseg.data.labels import (
    CONVENTIONS,
    ET,
    REGIONS,
    label_to_regions,
    probabilities_to_label,
)
from cascadeseg.data.preprocess import Preprocessed, preprocess_case, restore_to_source
from cascadeseg.errors import CascadesegError, ConfigError, InputError
from cascadeseg.fsutil import write_json_atomic
from cascadeseg.inference.ensemble import (
    ENSEMBLE_MODES,
    RECIPE_INFERENCE_KEYS,
    LoadedModel,
    ensemble_et_min_voxels,
    ensemble_min_lesion_voxels,
    flip_plan,
    recipe_inference_values,
)
from cascadeseg.inference.lesion_postprocess import (
    check_min_lesion_voxels,
    lesion_summary,
    postprocess_lesions,
)
from cascadeseg.inference.plan import Source, check_outputs, existing_outputs, resolve_inputs
from cascadeseg.inference.plan import files_in_modality_order as files_in_modality_order
from cascadeseg.inference.postprocess import postprocess_et
from cascadeseg.inference.shards import Share, env_int, folder_lock, gather
from cascadeseg.inference.sliding import (
    POLICIES,
    AdaptiveForward,
    available_memory_bytes,
    crop_padding,
    estimate_forward_bytes,
    free_memory,
    is_out_of_memory,
    pad_to_multiple,
    probe_bytes_per_voxel,
)
from cascadeseg.inference.tta import flip_tta_moments
from cascadeseg.runtime import autocast, effective_precision, resolve_device, tune_device

PRECISIONS: tuple[str, ...] = INFERENCE_PRECISIONS
BACKENDS: tuple[str, ...] = ("torch", "onnx")
#: Conventions ``--labels`` may name for written label maps.
OUTPUT_CONVENTIONS: tuple[str, ...] = ("brats2021", "brats2023")


@dataclass(frozen=True)
class PredictOptions:
    """How to predict.

    Attributes:
        tta: flip test-time augmentation (8 flips in 3D, 4 in 2D; two-stage paper, sec. 3.3).
        sliding_window: ``auto`` (whole volume, sliding window when memory is short), ``always``
            or ``never``.
        overlap: sliding-window overlap (fraction of the window).
        precision: ``auto`` (default: bf16 autocast where the device computes bf16 natively,
            :func:`cascadeseg.runtime.native_bf16`, i.e. CUDA GPUs with bf16 and CPUs with
            AVX512-BF16 or AMX; fp32 elsewhere), ``fp32`` or ``bf16`` (autocast; falls back to
            fp32 with a note where the device has no native bf16).
        ensemble_mode: how the snapshots of one run share the TTA flips
            (:func:`cascadeseg.inference.ensemble.flip_plan`): ``paired`` (default: snapshot
            ``i`` runs flip ``i``, the two-stage paper's 8 passes for 8 snapshots; other counts:
            :func:`cascadeseg.inference.tta.paired_flip_indices`) or ``product`` (every flip on
            every snapshot: 64 passes for 8). Other members run every flip in both modes.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        batch_slices: axial slices per network call for 2D models.
        threshold: probability threshold of each region.
        et_min_voxels: ET post-processing threshold in voxels (source grid); ``None`` uses the
            value stored with the model(s) (``tune-postprocess``), or 0 (off) if none is stored.
        min_lesion_voxels: per-region component-size thresholds in voxels (source grid),
            ``{"wt": N, "tc": N, "et": N}`` or a subset; regions left out use the values stored
            with the model(s), else 0 (off); see :mod:`~.lesion_postprocess`.
        labels: label convention of written label maps; ``None`` keeps the input's.
        save_probabilities: also write ``<case_id>_probabilities.nii.gz``.
        save_uncertainty: also write ``<case_id>_uncertainty.nii.gz``.
        overwrite: replace existing outputs (otherwise such cases are skipped, except that
            asked-for probability or uncertainty maps missing beside a segmentation of the same
            models are added).
        backend: ``torch`` or ``onnx`` (ONNX Runtime).
        memory_budget_gb: memory a whole-volume pass may use before ``auto`` picks the sliding
            window (``None``: 70% of the free memory of the device).
        fuse_brain_mask: zero probabilities outside the brain; ``None`` does it for 2D members
            (CU-Net, as that paper does, and the 2D U-Net, trained on brain pixels only).
        channels_last: run 3D PyTorch networks in the channels-last memory format; ``None``:
            on the CPU only, where it routes every convolution (also the 4-channel input layer
            and the transposed convolutions) to oneDNN instead of PyTorch's slow fallback
            (measured about 1.5x faster for the two-stage network on this 2-core CPU).
        flips_per_call: 3D TTA flips stacked into one network call (see
            :func:`~cascadeseg.inference.tta.flip_tta_moments`); ``None``: chosen by
            :func:`default_flips_per_call` (2 on the CPU, up to 8 on CUDA, when they fit the
            memory budget; else 1). On the CPU PyTorch runs batch-1 3D convolutions of narrow
            layers (seen with the profiler: 8 channels at 48^3, 16 at 24^3) on its slow native
            kernel instead of oneDNN; stacking two flips measured 1.55x faster per flip for the
            CPU cascade (``two_stage_cpu``) on a 2-mm brain (4 flips: 1.28x, 8: 1.18x); whole
            prediction of the demo's 8 held-out cases 65 s instead of 82 s. The other kernel
            rounds differently: probabilities moved by at most 0.008 there, and at most 207 of
            8.9 million voxels per case changed label.
        progress: show a progress bar and a line per case.
        compile: run PyTorch members through ``torch.compile`` (inductor). Measured on an
            H100 (2026-11-26, paper width, 144x176x160, bf16): one pass 0.031 s against 0.158 s
            eager, after 37 s of compilation; the compiled code is specialised to the input
            shape, and every case's brain box has its own, so it pays off for many passes (TTA,
            snapshots, many cases after the first recompilations make the shape dynamic), not
            for one short case. Off by default; measured on the GPU only.
        cache_dir: folder of a preprocessing cache (:mod:`cascadeseg.data.cache`): a case
            predicted again (other models of the same recipe, added maps) is not preprocessed
            again; ``None`` (default) keeps nothing.
        settings_origin: where ``tta``, ``sliding_window``, ``overlap``, ``precision`` and
            ``threshold`` came from (``option``, ``recipe`` or ``default``), recorded in each
            case's JSON; set by :func:`options_from_recipe`.
    """

    tta: bool = True
    sliding_window: str = "auto"
    overlap: float = 0.5
    precision: str = "auto"
    device: str = "auto"
    batch_slices: int = 16
    threshold: float = 0.5
    et_min_voxels: int | None = None
    min_lesion_voxels: Mapping[str, int] | None = None
    labels: str | None = None
    save_probabilities: bool = False
    save_uncertainty: bool = False
    overwrite: bool = False
    backend: str = "torch"
    memory_budget_gb: float | None = None
    fuse_brain_mask: bool | None = None
    channels_last: bool | None = None
    flips_per_call: int | None = None
    progress: bool = True
    cache_dir: str | None = None
    ensemble_mode: str = "paired"
    compile: bool = False
    settings_origin: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.sliding_window not in POLICIES:
            raise ConfigError(
                f"sliding_window must be one of {POLICIES}, got {self.sliding_window!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.ensemble_mode not in ENSEMBLE_MODES:
            raise ConfigError(
                f"ensemble_mode must be one of {ENSEMBLE_MODES}, got {self.ensemble_mode!r}"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.batch_slices < 1:
            raise ConfigError(f"batch_slices must be >= 1, got {self.batch_slices}")
        if self.flips_per_call is not None and self.flips_per_call < 1:
            raise ConfigError(f"flips_per_call must be >= 1, got {self.flips_per_call}")
        if self.et_min_voxels is not None and self.et_min_voxels < 0:
            raise ConfigError(f"et_min_voxels must be >= 0, got {self.et_min_voxels}")
        if self.min_lesion_voxels is not None:
            check_min_lesion_voxels(self.min_lesion_voxels, "predict options")
        if self.labels is not None and self.labels not in CONVENTIONS:
            raise ConfigError(
                f"labels must be one of {', '.join(sorted(CONVENTIONS))}, got {self.labels!r}"
            )


def options_from_recipe(
    models: Sequence[LoadedModel], given: Mapping[str, Any], **other: Any
) -> PredictOptions:
    """Prediction options with one source of truth for the recipe's ``inference.*`` values.

    For each of ``tta``, ``sliding_window``, ``overlap``, ``precision`` and ``threshold``: the
    value in ``given`` when it is not ``None`` (a command-line flag), else the value stored
    with the models' recipe (:func:`cascadeseg.inference.ensemble.recipe_inference_values`),
    else :class:`PredictOptions`' default. Where each came from is kept in
    ``settings_origin`` (and each case's JSON).

    Args:
        models: the loaded ensemble.
        given: explicit values by field name; ``None`` means "not given".
        other: the remaining :class:`PredictOptions` fields.

    Raises:
        ConfigError: an explicit or stored value is invalid (a stored one names the checkpoint).
    """
    stored, where = recipe_inference_values(models)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    base = PredictOptions(**other)
    for key in RECIPE_INFERENCE_KEYS:
        if given.get(key) is not None:
            values[key], origin[key] = given[key], "option"
        elif key in stored:
            try:
                dataclasses.replace(base, **{key: stored[key]})
            except (ConfigError, TypeError) as exc:
                raise ConfigError(f"{where}: stored recipe value inference.{key}: {exc}") from None
            values[key], origin[key] = stored[key], "recipe"
        else:
            origin[key] = "default"
    return dataclasses.replace(base, **values, settings_origin=origin)


@dataclass(frozen=True, eq=False)
class Prediction:
    """The result of :func:`predict_case`, on the source grid of the case.

    Attributes:
        case_id: the case id.
        label: ``(X, Y, Z)`` uint8 internal labels (0 bg, 1 NCR, 2 ED, 3 ET), post-processed.
        probabilities: ``(3, X, Y, Z)`` float32 region probabilities ``[WT, TC, ET]``.
        uncertainty: ``(3, X, Y, Z)`` float32 voxel-wise variance of the probabilities over all
            TTA passes of all members, or ``None`` when not asked for.
        volumes_ml: region volumes ``{"WT", "TC", "ET"}`` in mL (voxel size from the header).
        info: settings used and timings (JSON-friendly).
    """

    case_id: str
    label: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray | None
    volumes_ml: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseResult:
    """What happened to one case in :func:`predict`.

    Attributes:
        case_id: the case id.
        status: ``ok``, ``skipped`` (outputs exist, no ``overwrite``) or ``failed``.
        outputs: files written.
        message: why it failed or was skipped ("" when ok).
        volumes_ml: region volumes in mL (ok cases).
        seconds: wall time of the case (reading, prediction and writing).
    """

    case_id: str
    status: str
    outputs: list[Path] = field(default_factory=list)
    message: str = ""
    volumes_ml: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# the network passes


def use_channels_last(member: LoadedModel, options: PredictOptions, device: torch.device) -> bool:
    """Whether ``member`` runs in the channels-last memory format (see :class:`PredictOptions`)."""
    if member.spatial_dims != 3 or not isinstance(member.network, torch.nn.Module):
        return False
    if options.channels_last is None:
        return device.type == "cpu"
    return options.channels_last


def probability_fn(
    member: LoadedModel,
    precision: str,
    device: torch.device,
    channels_last: bool = False,
    compile_network: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> member's [WT, TC, ET] probabilities``, float32, under the requested precision.

    With ``compile_network`` a PyTorch member runs through ``torch.compile`` (see
    :class:`PredictOptions`), compiled once per member and kept for later cases.
    """
    if channels_last:
        assert isinstance(member.network, torch.nn.Module)
        member.network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    network = compiled_network(member.network) if compile_network else None

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with autocast(precision, device):
            return member.probabilities(x, network).float()

    return fn


_COMPILED: weakref.WeakKeyDictionary[torch.nn.Module, Callable[..., Any]] = (
    weakref.WeakKeyDictionary()
)


def compiled_network(network: Callable[..., Any]) -> Callable[..., Any] | None:
    """``torch.compile(network)``, made once per network; ``None`` for ONNX Runtime members."""
    if not isinstance(network, torch.nn.Module):
        return None
    if network not in _COMPILED:
        _COMPILED[network] = torch.compile(network)
    return _COMPILED[network]


def _memory_budget(options: PredictOptions, device: torch.device) -> float:
    if options.memory_budget_gb is not None:
        return options.memory_budget_gb * 2**30
    from cascadeseg.inference.sliding import MEMORY_FRACTION

    return available_memory_bytes(device) * MEMORY_FRACTION


def member_moments_3d(
    member: LoadedModel,
    image: np.ndarray,
    options: PredictOptions,
    device: torch.device,
    precision: str,
    flips: Sequence[tuple[int, ...]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Mean and mean-of-squares ``(3, x, y, z)`` of one 3D member over its TTA passes.

    Args:
        member: a 3D ensemble member.
        image: ``(4, x, y, z)`` preprocessed image.
        options: prediction options.
        device: where the network runs.
        precision: effective precision.
        flips: the flips this member runs (:func:`~cascadeseg.inference.ensemble.flip_plan`);
            ``None``: all with ``options.tta``, the identity without.

    Returns:
        ``(mean, mean_sq, info)``; CPU float32 tensors and a dict with the mode used.
    """
    array = np.ascontiguousarray(image, dtype=np.float32)
    if not array.flags.writeable:  # memory-mapped from the preprocessing cache
        array = array.copy()
    x = torch.from_numpy(array)[None]
    x, pads = pad_to_multiple(x, member.size_divisor)
    # Flips and TTA sums happen where the network runs (ONNX Runtime takes CPU tensors).
    if isinstance(member.network, torch.nn.Module):
        x = x.to(device)
    channels_last = use_channels_last(member, options, device)
    fn = probability_fn(member, precision, device, channels_last, options.compile)
    budget = _memory_budget(options, device)
    per_voxel: float | None = None
    if options.sliding_window == "auto" and isinstance(member.network, torch.nn.Module):
        per_voxel = _bytes_per_voxel(member, device)
        if precision == "bf16":
            per_voxel /= 2
    n_flips = len(flips) if flips is not None else (8 if options.tta else 1)
    per_call = options.flips_per_call
    if per_call is None:
        per_call = default_flips_per_call(n_flips > 1, device, per_voxel, x.shape[2:], budget)
    per_call = min(per_call, n_flips)
    estimate = (
        None
        if per_voxel is None
        else functools.partial(estimate_forward_bytes, per_voxel, per_call)
    )
    roi = member.patch_size if len(member.patch_size) == 3 else (128, 128, 128)
    forward = AdaptiveForward(
        fn,
        policy=options.sliding_window,
        roi_size=roi,
        overlap=options.overlap,
        multiple=member.size_divisor,
        budget_bytes=budget,
        estimate_bytes=estimate,
        device=device,
    )
    with torch.inference_mode():
        mean, mean_sq, passes = flip_tta_moments(
            forward, x, spatial_dims=3, tta=options.tta, flips_per_call=per_call, flips=flips
        )
    mean = crop_padding(mean, pads)[0].cpu()
    mean_sq = crop_padding(mean_sq, pads)[0].cpu()
    info = {
        "passes": passes,
        "mode": forward.mode,
        "fallbacks": forward.fallbacks,
        "channels_last": channels_last,
        "flips_per_call": per_call,
    }
    return mean, mean_sq, info


def default_flips_per_call(
    tta: bool,
    device: torch.device,
    per_voxel: float | None,
    shape: Sequence[int],
    budget: float,
) -> int:
    """TTA flips stacked per network call when ``flips_per_call`` is not set.

    CPU: 2 when a pass of two fits ``budget`` (see :class:`PredictOptions`). CUDA: the most of
    8, 4 or 2 that fits: one whole-brain flip does not fill an H100 (measured 2026-11-26 at
    paper width, 144x176x160, bf16: 8 flips one per call 1.38 s, all 8 in one call 0.58 s;
    docs/performance.md). Without a memory estimate (``per_voxel`` None): 1.
    """
    if not tta or per_voxel is None:
        return 1
    candidates = (2,) if device.type == "cpu" else (8, 4, 2)
    for k in candidates:
        if estimate_forward_bytes(per_voxel, k, shape) <= budget:
            return k
    return 1


_PROBED: weakref.WeakKeyDictionary[torch.nn.Module, float] = weakref.WeakKeyDictionary()


def _bytes_per_voxel(member: LoadedModel, device: torch.device) -> float:
    """Memory per input voxel of ``member``'s network, probed once per network."""
    network = member.network
    assert isinstance(network, torch.nn.Module)
    if network not in _PROBED:
        _PROBED[network] = probe_bytes_per_voxel(
            network, member.in_channels, 3, device, side=2 * member.size_divisor
        )
    return _PROBED[network]


def slice_stack(image: np.ndarray, z0: int, z1: int, context: int) -> np.ndarray:
    """Axial slices ``z0..z1-1`` of ``image`` with ``context`` neighbours on each side.

    The channel order is that of training (:class:`cascadeseg.data.datasets.SliceDataset2D`):
    channel ``(offset + k) * C + c`` for offsets ``-k..k``; slices beyond the volume are zeros.

    Args:
        image: ``(C, X, Y, Z)``.
        z0, z1: slice range.
        context: ``k``, neighbouring slices on each side.

    Returns:
        ``(z1 - z0, C * (2k + 1), X, Y)`` float32.
    """
    channels, _, _, depth = image.shape
    out = np.zeros((z1 - z0, channels * (2 * context + 1), *image.shape[1:3]), dtype=np.float32)
    for i, offset in enumerate(range(-context, context + 1)):
        lo, hi = max(z0 + offset, 0), min(z1 + offset, depth)
        if lo >= hi:
            continue
        block = np.moveaxis(image[..., lo:hi], -1, 0)  # (b, C, X, Y)
        out[lo - offset - z0 : hi - offset - z0, i * channels : (i + 1) * channels] = block
    return out


def member_moments_2d(
    member: LoadedModel,
    image: np.ndarray,
    options: PredictOptions,
    device: torch.device,
    precision: str,
    flips: Sequence[tuple[int, ...]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Mean and mean-of-squares ``(3, x, y, z)`` of one 2D member, slice by slice.

    Batches of ``options.batch_slices`` axial slices go through the network with in-plane flip
    TTA (``flips``, as for :func:`member_moments_3d`); on an out-of-memory error the batch is
    halved and the slices retried.
    """
    depth = image.shape[-1]
    spatial = image.shape[1:3]
    mean = torch.zeros((3, *spatial, depth))
    mean_sq = torch.zeros((3, *spatial, depth))
    fn = probability_fn(member, precision, device, compile_network=options.compile)
    batch = options.batch_slices
    passes = 0
    fallbacks: list[str] = []
    z0 = 0
    with torch.inference_mode():
        while z0 < depth:
            z1 = min(depth, z0 + batch)
            x = torch.from_numpy(slice_stack(image, z0, z1, member.slice_context))
            x, pads = pad_to_multiple(x, member.size_divisor)
            oom = False
            try:
                m, m2, passes = flip_tta_moments(
                    fn, x, spatial_dims=2, tta=options.tta, flips=flips
                )
            except Exception as exc:
                if not is_out_of_memory(exc) or batch == 1:
                    raise
                oom = True
            if oom:
                free_memory(device)
                batch = max(1, batch // 2)
                fallbacks.append(f"out of memory: {batch} slices per batch")
                continue
            # (b, 3, X, Y) -> (3, X, Y, b)
            mean[..., z0:z1] = crop_padding(m, pads).permute(1, 2, 3, 0).cpu()
            mean_sq[..., z0:z1] = crop_padding(m2, pads).permute(1, 2, 3, 0).cpu()
            z0 = z1
    info = {"passes": passes, "mode": f"slices (batch {batch})", "fallbacks": fallbacks}
    return mean, mean_sq, info


# --------------------------------------------------------------------------------------------
# one case


def region_volumes_ml(label: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volumes of ``[WT, TC, ET]`` in mL (1 mL = 1000 mm^3) of an internal label map."""
    voxel_ml = voxel_volume_ml(spacing)
    regions = label_to_regions(label)
    return {
        name: round(int(np.count_nonzero(r)) * voxel_ml, 4) for name, r in zip(REGIONS, regions)
    }


def _members_for_backend(models: Sequence[LoadedModel], backend: str) -> list[LoadedModel]:
    if backend == "torch":
        return list(models)
    from cascadeseg.inference.export import to_onnx_member

    return [to_onnx_member(m) for m in models]


def run_precision(options: PredictOptions, device: torch.device) -> tuple[str, str]:
    """The precision prediction runs in and a note when it is not the one asked for.

    :func:`~cascadeseg.runtime.effective_precision` for the PyTorch backend; ONNX Runtime runs
    the exported fp32 graph, where autocast has no effect.
    """
    precision, note = effective_precision(options.precision, device)
    if options.backend == "onnx" and precision != "fp32":
        if options.precision == "bf16":
            note = "the onnx backend runs the exported fp32 graph: fp32 used"
        precision = "fp32"
    return precision, note


def predict_preprocessed(
    pre: Preprocessed,
    models: Sequence[LoadedModel],
    options: PredictOptions,
    *,
    device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Ensemble + TTA region probabilities on the preprocessed grid.

    Returns:
        ``(mean, variance, info)``: ``(3, x, y, z)`` float32 arrays ``[WT, TC, ET]`` on the grid
        of ``pre`` and a JSON-friendly dict of what ran.
    """
    if not models:
        raise ConfigError("no model given")
    device = device or resolve_device(options.device)
    precision, note = run_precision(options, device)
    total: np.ndarray | None = None
    total_sq: np.ndarray | None = None
    members_info = []
    plan = flip_plan(models, options.ensemble_mode, options.tta)
    for member, flips in zip(models, plan):
        run = member_moments_3d if member.spatial_dims == 3 else member_moments_2d
        try:
            mean_t, mean_sq_t, info = run(member, pre.image, options, device, precision, flips)
        except Exception as exc:
            # Out of memory outside the network call (TTA sums, the padded input): retry the
            # member with sliding windows only; if that fails too, the case fails, not the run.
            if not is_out_of_memory(exc) or options.sliding_window == "always":
                raise
            retry = True
        else:
            retry = False
        if retry:
            free_memory(device)
            fallback = dataclasses.replace(options, sliding_window="always")
            mean_t, mean_sq_t, info = run(member, pre.image, fallback, device, precision, flips)
            info["fallbacks"] = ["out of memory: member retried with sliding windows"]
        mean, mean_sq = mean_t.numpy(), mean_sq_t.numpy()
        # 2D members (CU-Net and the 2D U-Net) are trained on brain pixels only (LWS / brain-
        # masked cross-entropy), so outside the brain their output means nothing: the CU-Net
        # paper fuses the non-brain mask at test time, and the same holds for unet2d.
        trained_on_brain = member.spatial_dims == 2 or member.output_kind == "cunet"
        if options.fuse_brain_mask or (options.fuse_brain_mask is None and trained_on_brain):
            mean = mean * pre.brain_mask[None]
            mean_sq = mean_sq * pre.brain_mask[None]
            info["brain_mask_fused"] = True
        info["source"] = str(member.source)
        info["flips"] = [list(f) for f in flips]
        members_info.append(info)
        if total is None or total_sq is None:
            total, total_sq = mean.copy(), mean_sq.copy()
        else:
            total += mean
            total_sq += mean_sq
    assert total is not None and total_sq is not None
    n = len(models)
    mean_all = total / n
    variance = np.maximum(total_sq / n - mean_all**2, 0.0)
    info_all = {
        "device": str(device),
        "precision": precision,
        "precision_requested": options.precision,
        "precision_note": note,
        "ensemble_mode": options.ensemble_mode,
        # Network passes over the whole case, all members (8 for a paired run of 8 snapshots).
        "passes": int(sum(m["passes"] for m in members_info)),
        "members": members_info,
    }
    return mean_all.astype(np.float32), variance.astype(np.float32), info_all


def predict_case(
    case: Case, models: Sequence[LoadedModel], options: PredictOptions | None = None
) -> Prediction:
    """Segment one case with an ensemble (see the module docstring for the steps).

    Args:
        case: the input :class:`Case` (its label, if any, is ignored).
        models: ensemble members from :func:`cascadeseg.inference.load_models` (one recipe).
        options: prediction options.

    Returns:
        A :class:`Prediction` on the source grid of ``case`` (same shape as ``case.image[0]``).
    """
    options = options or PredictOptions()
    models = _members_for_backend(models, options.backend)
    start = time.perf_counter()
    if options.cache_dir is not None:
        from cascadeseg.data.cache import PreprocessCache

        cache = PreprocessCache(options.cache_dir, models[0].preprocess)
        pre = cache.get_case(case.with_label(None))
    else:
        pre = preprocess_case(case.with_label(None), models[0].preprocess)
    t_pre = time.perf_counter() - start
    mean, variance, info = predict_preprocessed(pre, models, options)
    t_net = time.perf_counter() - start - t_pre
    probabilities = restore_to_source(mean, pre, order=1)
    uncertainty = restore_to_source(variance, pre, order=1) if options.save_uncertainty else None
    label = probabilities_to_label(probabilities, options.threshold)
    stored_lesions = ensemble_min_lesion_voxels(models)
    label, lesion_info = postprocess_lesions(label, stored_lesions, options.min_lesion_voxels)
    info.update(lesion_info)
    stored = ensemble_et_min_voxels(models)
    et_min = options.et_min_voxels if options.et_min_voxels is not None else (stored or 0)
    et_before = int(np.count_nonzero(label == ET))
    label = postprocess_et(label, et_min)
    t_total = time.perf_counter() - start
    info.update(
        {
            "tta": options.tta,
            "threshold": options.threshold,
            "et_min_voxels": et_min,
            "et_min_voxels_source": "option"
            if options.et_min_voxels is not None
            else ("stored" if stored is not None else "default (off)"),
            "et_replaced_by_necrosis": bool(et_before and not np.any(label == 3)),
            "sliding_window": options.sliding_window,
            "overlap": options.overlap,
            "settings_origin": dict(options.settings_origin),
            "backend": options.backend,
            "preprocessing": models[0].preprocess.to_dict(),
            # The grid the network ran on (brain crop, target spacing), before padding.
            "network_input_size": [int(v) for v in pre.image.shape[1:]],
            "seconds": {
                "preprocess": round(t_pre, 3),
                "network": round(t_net, 3),
                "total": round(t_total, 3),
            },
        }
    )
    return Prediction(
        case_id=case.case_id,
        label=label.astype(np.uint8),
        probabilities=probabilities.astype(np.float32, copy=False),
        uncertainty=None if uncertainty is None else uncertainty.astype(np.float32, copy=False),
        volumes_ml=region_volumes_ml(label, case.meta.spacing),
        info=info,
    )


# --------------------------------------------------------------------------------------------
# inputs


# The inputs are resolved by :mod:`cascadeseg.inference.plan` (checked before any inference).


# --------------------------------------------------------------------------------------------
# outputs


_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


def output_paths(case_id: str, output_dir: Path, options: PredictOptions) -> dict[str, Path]:
    """Files written for a case, by kind (``label``, ``json``, ``probabilities``,
    ``uncertainty``). Raises InputError for a case id that could leave ``output_dir``."""
    if not _SAFE_ID.match(case_id) or ".." in case_id:
        raise InputError(f"case id {case_id!r} is not a safe file name; nothing written")
    paths = {
        "label": output_dir / f"{case_id}.nii.gz",
        "json": output_dir / f"{case_id}.json",
    }
    if options.save_probabilities:
        paths["probabilities"] = output_dir / f"{case_id}_probabilities.nii.gz"
    if options.save_uncertainty:
        paths["uncertainty"] = output_dir / f"{case_id}_uncertainty.nii.gz"
    return paths


def _float_header(meta: Meta) -> Any:
    if meta.header is None:
        return None
    header = meta.header.copy()
    # Probabilities are in [0, 1]: the source's display window would hide them.
    header["cal_min"] = 0
    header["cal_max"] = 0
    return header


def _write_4d(array: np.ndarray, meta: Meta, path: Path) -> Path:
    """``(3, X, Y, Z)`` -> a 4D NIfTI ``(X, Y, Z, 3)`` float32 on the input's grid (atomic)."""
    from cascadeseg.data.nifti import save_nifti

    data = np.ascontiguousarray(np.moveaxis(array.astype(np.float32, copy=False), 0, -1))
    return save_nifti(data, np.asarray(meta.affine), _float_header(meta), path)


def write_prediction(
    prediction: Prediction, case: Case, paths: dict[str, Path], options: PredictOptions
) -> list[Path]:
    """Write a prediction's files (each atomically; the JSON last, marking the case complete)."""
    from cascadeseg.data.layouts import write_label_map

    written: list[Path] = []
    if "probabilities" in paths:
        written.append(_write_4d(prediction.probabilities, case.meta, paths["probabilities"]))
    if "uncertainty" in paths and prediction.uncertainty is not None:
        written.append(_write_4d(prediction.uncertainty, case.meta, paths["uncertainty"]))
    convention = options.labels or case.meta.label_convention
    # The writer names the file after meta.case_id: make that the planned name, so that no other
    # path (possibly an input's, which the plan did not check) is ever written.
    meta = dataclasses.replace(case.meta, case_id=paths["label"].name[: -len(".nii.gz")])
    written.append(
        write_label_map(prediction.label, meta, paths["label"].parent, convention=convention)
    )
    voxel_ml = voxel_volume_ml(case.meta.spacing)
    record = {
        "case_id": prediction.case_id,
        "version": __version__,
        "volumes_ml": prediction.volumes_ml,
        "voxel_volume_ml": voxel_ml,
        "label_convention": convention,
        "shape": list(case.meta.shape),
        "spacing_mm": list(case.meta.spacing),
        "inputs": {k: str(v) for k, v in case.meta.files.items()},
        "outputs": {k: p.name for k, p in paths.items() if k != "json"},
        "probability_volumes": list(REGIONS),
        "lesions": lesion_summary(prediction.label, case.meta.spacing),
        "settings": prediction.info,
    }
    written.append(write_json_atomic(record, paths["json"], indent=1))
    return written


# --------------------------------------------------------------------------------------------
# a batch


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, CascadesegError):
        return text or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _lock_command() -> str:
    """The command line shown to a second run into the same folder."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if name in ("__main__.py", "cascadeseg"):
        name = "cascadeseg"
    return " ".join([name, *sys.argv[1:]])


def check_uncertainty(options: PredictOptions, models: Sequence[LoadedModel]) -> None:
    """``save_uncertainty`` with a single pass has nothing to vary over: a :class:`ConfigError`."""
    if options.save_uncertainty and not options.tta and len(models) == 1:
        raise ConfigError(
            "--save-uncertainty: one model without TTA makes one pass, so there is nothing to "
            "vary over; drop --no-tta, or give several models (or a run with snapshots)"
        )


def plan_outputs(
    sources: Sequence[Source], output_dir: Path, options: PredictOptions
) -> dict[str, dict[str, Path]]:
    """Output files of every case whose id is a safe file name (others fail when their turn
    comes), checked against the inputs (:func:`cascadeseg.inference.plan.check_outputs`)."""
    planned: dict[str, dict[str, Path]] = {}
    for source in sources:
        with contextlib.suppress(InputError):
            planned[source.case_id] = output_paths(source.case_id, output_dir, options)
    check_outputs(planned, sources)
    return planned


def predict(
    models: Sequence[LoadedModel],
    inputs: Path | str | Sequence[Path | str],
    output_dir: Path | str,
    options: PredictOptions | None = None,
    *,
    echo: Callable[[str], None] | None = None,
    case_id: str | None = None,
    share: Share | None = None,
) -> list[CaseResult]:
    """Segment every case of ``inputs`` and write the results to ``output_dir``.

    Before any inference: the inputs are resolved (one id per case, over all inputs), every
    output path is checked not to be an input file (:mod:`cascadeseg.inference.plan`), the
    output folder is checked to be a writable folder and locked against a second run
    (:func:`cascadeseg.fsutil.output_lock`, which also removes an interrupted run's temporary
    files).

    Args:
        models: ensemble members (:func:`cascadeseg.inference.load_models`).
        inputs: a case folder, a dataset folder in any supported layout, several folders, or
            four modality files (FLAIR, T1, T1ce, T2; recognised by name when possible).
        output_dir: folder for ``<case_id>.nii.gz``, ``<case_id>.json`` and the optional maps
            (created; nothing is written elsewhere).
        options: prediction options.
        echo: where the per-case line and the summary go (default: ``tqdm.write`` under the
            progress bar, else ``print``).
        case_id: the case id of four modality files (default: the files' common prefix).
        share: predict only this process's share of the cases (``--part i/n`` and/or a
            torchrun rank; :mod:`cascadeseg.inference.shards`); ``None``: every case. Every
            case is still checked first; a share holds a lock of its own on ``output_dir``.
            Under torchrun (a joined process group) the ranks wait for each other at the end,
            rank 0 prints the summary of all cases, and every rank returns all ranks' results.

    Returns:
        One :class:`CaseResult` per case of the share (all ranks' cases under torchrun), in
        input order. A case that cannot be read or
        predicted is ``failed`` and the others continue; a case whose outputs exist is
        ``skipped`` unless ``overwrite`` (or only asked-for maps are missing: see
        :func:`~cascadeseg.inference.plan.existing_outputs`).

    Raises:
        InputError: no case, two cases with one id, an output that is an input, an output
            folder that is a file, not writable or locked by another run.
        ConfigError: ``save_uncertainty`` with a single pass.
    """
    from tqdm import tqdm

    options = options or PredictOptions()
    output_dir = Path(output_dir)
    sources = resolve_inputs(inputs, case_id)
    check_uncertainty(options, models)
    planned = plan_outputs(sources, output_dir, options)
    share = share or Share()
    mine = share.select(sources, key=lambda s: s.case_id)
    say = echo or (tqdm.write if options.progress else print)
    if not share.whole:
        say(f"{share.tag}: {len(mine)} of {len(sources)} case(s)")
    device = resolve_device(options.device, env_int("LOCAL_RANK", 0))
    tune_device(device)
    results: list[CaseResult] = []
    with folder_lock(output_dir, share, _lock_command(), say):
        # Converted once here (ONNX export in memory); predict_case leaves them as they are.
        members = _members_for_backend(models, options.backend)
        case_options = dataclasses.replace(options, device=str(device))
        _, precision_note = run_precision(options, device)
        if precision_note:
            say(f"note: {precision_note}")
        bar = tqdm(mine, desc="predicting", unit="case", disable=not options.progress)
        for source in bar:
            paths = planned.get(source.case_id)
            result = _predict_source(source, paths, output_dir, members, case_options)
            if result.status == "failed":
                free_memory(device)
            results.append(result)
            say(format_result(result))
    if share.world_size > 1:  # wait for every rank, then rank 0 reports all cases
        order = {s.case_id: i for i, s in enumerate(sources)}
        results = sorted(gather(results, share), key=lambda r: order.get(r.case_id, -1))
        if share.rank != 0:
            return results
    for line in summary_lines(results, output_dir):
        say(line)
    return results


def _predict_source(
    source: Source,
    paths: dict[str, Path] | None,
    output_dir: Path,
    members: Sequence[LoadedModel],
    options: PredictOptions,
) -> CaseResult:
    """Read, predict and write one case (or skip it); never raises for a case's own fault."""
    start = time.perf_counter()
    result = CaseResult(case_id=source.case_id, status="failed")
    try:
        paths = paths or output_paths(source.case_id, output_dir, options)
        action, keep, reason = existing_outputs(paths, members, options)
        if action == "skip":
            result.status, result.message = "skipped", reason
        else:
            case = source.read()
            if case.case_id != source.case_id:  # the reader named it differently
                raise InputError(
                    f"{source.files[0]}: read as case {case.case_id!r}, not "
                    f"{source.case_id!r}; nothing written"
                )
            prediction = predict_case(case, members, options)
            if action == "complete":
                result.outputs = complete_outputs(prediction, case, paths, keep)
                names = ", ".join(p.name for p in result.outputs[:-1])
                result.message = f"{paths['label'].name} kept; added {names}"
            else:
                result.outputs = write_prediction(prediction, case, paths, options)
            result.status = "ok"
            result.volumes_ml = prediction.volumes_ml
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        result.status = "failed"
        result.message = _one_line(exc)
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def complete_outputs(
    prediction: Prediction, case: Case, paths: dict[str, Path], keep: set[str]
) -> list[Path]:
    """Write the maps of ``paths`` not in ``keep``, and list them in the case's JSON record
    (whose volumes and settings describe the kept segmentation and stay as they are)."""
    import json

    written: list[Path] = []
    maps = {"probabilities": prediction.probabilities, "uncertainty": prediction.uncertainty}
    for kind, array in maps.items():
        if kind in paths and kind not in keep and array is not None:
            written.append(_write_4d(array, case.meta, paths[kind]))
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    record.setdefault("outputs", {}).update({k: p.name for k, p in paths.items() if k != "json"})
    written.append(write_json_atomic(record, paths["json"], indent=1))
    return written


def format_result(result: CaseResult) -> str:
    """The console line of one case."""
    if result.status == "ok":
        vols = "  ".join(f"{k} {v:8.2f} mL" for k, v in result.volumes_ml.items())
        note = f"  [{result.message}]" if result.message else ""
        return f"{result.case_id}  {vols}  ({result.seconds:.1f} s){note}"
    return f"{result.case_id}  {result.status.upper()}: {result.message}"


def summary_lines(results: Sequence[CaseResult], output_dir: Path) -> list[str]:
    """Summary printed after a batch: counts, and the failed cases with their reasons."""
    ok = [r for r in results if r.status == "ok"]
    skipped = [r for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status == "failed"]
    lines = [
        f"{len(results)} case(s): {len(ok)} written to {output_dir}, "
        f"{len(skipped)} skipped, {len(failed)} failed"
    ]
    if skipped:
        lines.append(
            "skipped (outputs exist; --overwrite replaces them): "
            + ", ".join(r.case_id for r in skipped)
        )
    for r in failed:
        lines.append(f"failed: {r.case_id}: {r.message}")
    return lines


def results_to_json(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """JSON-friendly form of :func:`predict`'s results."""
    out = []
    for r in results:
        d = asdict(r)
        d["outputs"] = [str(p) for p in r.outputs]
        out.append(d)
    return out


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mL."""
    return math.prod(abs(float(s)) for s in spacing) / 1000.0
