"""One network on one preprocessed volume: region probabilities ``[WT, TC, ET]`` of a whole image.

* 3D networks: the whole brain in one pass (two-stage paper, sec. 3.3: "we segment the whole brain
  region at once instead of using a sliding window"), padded to the network's multiple; a Gaussian
  sliding window takes over when memory is short (:class:`~.memory.AdaptiveForward`).
* 2D networks: axial slices in batches, with the slice context the network was trained with
  (:func:`slice_stack`); on an out-of-memory error the batch is halved.

Each pass runs the network under the requested autocast precision; its output is turned into
probabilities in float32 (:func:`probability_fn`). Flip TTA keeps running first and second moments
(:func:`~cascadeseg.inference.tta.flip_tta_moments`), so the predictor gets the mean and the
variance over passes.

:func:`member_moments` is the predictor's path (one ensemble member, its flips, the options);
:func:`predict_volume` the same path for a network in memory (training's validation), returning
the probabilities alone.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cascadeseg.data.missing import with_availability
from cascadeseg.inference.loading import LoadedModel, member_of_network
from cascadeseg.inference.memory import (
    AdaptiveForward,
    bytes_per_voxel,
    default_flips_per_call,
    estimate_forward_bytes,
    free_memory,
    is_out_of_memory,
    memory_budget,
)
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.roi import Box, TumourRegion, check_tta_region, region_flip_moments
from cascadeseg.inference.sliding import Pads, crop_padding, pad_to_multiple
from cascadeseg.inference.tta import flip_combinations, flip_tta_moments
from cascadeseg.runtime import autocast, to_float32

#: ``(mean, mean_of_squares, info)`` of one network over its passes: ``(3, X, Y, Z)`` CPU float32
#: tensors and a JSON-friendly record of what ran.
Moments = tuple[torch.Tensor, torch.Tensor, dict[str, Any]]

#: :func:`predict_volume`'s policy: the whole volume, a sliding window only after an
#: out-of-memory error (no memory estimate first).
FALLBACK = "fallback"


# --------------------------------------------------------------------------------------------
# one network call


def use_channels_last(member: LoadedModel, options: PredictOptions, device: torch.device) -> bool:
    """Whether ``member`` runs in the channels-last memory format (see :class:`PredictOptions`)."""
    if member.spatial_dims != 3 or not isinstance(member.network, torch.nn.Module):
        return False
    if options.channels_last is None:
        return device.type == "cpu"
    return options.channels_last


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


def probability_fn(
    member: LoadedModel,
    precision: str,
    device: torch.device,
    channels_last: bool = False,
    compile_network: bool = False,
    present: np.ndarray | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> member's [WT, TC, ET] probabilities``, float32.

    The network runs under the autocast of ``precision``; its output is turned into
    probabilities in float32 (as the training losses see it). With ``compile_network`` a
    PyTorch member runs through ``torch.compile`` (see :class:`PredictOptions`), compiled once
    per member and kept for later cases. A member with the ``mask`` fill gets the availability
    channels of ``present`` (``(4,)``, 1 present; ``None``: all present) appended to every
    input it sees (:func:`cascadeseg.data.missing.with_availability`).
    """
    masked = member.missing_fill == "mask"
    flags = np.ones(4, dtype=np.float32) if present is None else present
    if channels_last:
        assert isinstance(member.network, torch.nn.Module)
        member.network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    compiled = compiled_network(member.network) if compile_network else None
    # ``is None``, not ``or``: a compiled module raises on ``bool()`` (its ``__len__``).
    network = member.network if compiled is None else compiled

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if masked:
            x = with_availability(x, flags)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with autocast(precision, device):
            out = network(x)
        return member.to_probabilities(to_float32(out))

    return fn


# --------------------------------------------------------------------------------------------
# 3D: the whole volume


def _padded_input(
    member: LoadedModel, image: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, Pads]:
    """``(1, C, *padded)`` input of a ``(C, x, y, z)`` image, where the network runs."""
    array = np.ascontiguousarray(image, dtype=np.float32)
    if not array.flags.writeable:  # memory-mapped from the preprocessing cache
        array = array.copy()
    x, pads = pad_to_multiple(torch.from_numpy(array)[None], member.size_divisor)
    # Flips and TTA sums happen where the network runs (ONNX Runtime takes CPU tensors).
    if isinstance(member.network, torch.nn.Module):
        x = x.to(device)
    return x, pads


def _forward_3d(
    member: LoadedModel,
    x: torch.Tensor,
    options: PredictOptions,
    device: torch.device,
    precision: str,
    n_flips: int,
    estimate_memory: bool,
    present: np.ndarray | None = None,
) -> tuple[AdaptiveForward, int, bool]:
    """The network call of a 3D member with its memory policy: ``(forward, flips_per_call,
    channels_last)`` for the padded input ``x`` (see :func:`member_moments_3d`)."""
    channels_last = use_channels_last(member, options, device)
    fn = probability_fn(member, precision, device, channels_last, options.compile, present)
    budget = memory_budget(options.memory_budget_gb, device)
    per_voxel: float | None = None
    if (
        estimate_memory
        and options.sliding_window == "auto"
        and isinstance(member.network, nn.Module)
    ):
        side = 2 * member.size_divisor
        per_voxel = bytes_per_voxel(member.network, member.in_channels, device, side)
        if precision == "bf16":
            per_voxel /= 2
    per_call = options.flips_per_call
    if per_call is None:
        per_call = default_flips_per_call(n_flips > 1, device, per_voxel, x.shape[2:], budget)
    per_call = min(per_call, n_flips)
    forward = AdaptiveForward(
        fn,
        policy=options.sliding_window,
        roi_size=member.patch_size if len(member.patch_size) == 3 else (128, 128, 128),
        overlap=options.overlap,
        multiple=member.size_divisor,
        budget_bytes=budget,
        estimate_bytes=None
        if per_voxel is None
        else functools.partial(estimate_forward_bytes, per_voxel, per_call),
        device=device,
    )
    return forward, per_call, channels_last


def member_moments_3d(
    member: LoadedModel,
    image: np.ndarray,
    options: PredictOptions,
    device: torch.device,
    precision: str,
    flips: Sequence[tuple[int, ...]] | None = None,
    *,
    estimate_memory: bool = True,
    region: TumourRegion | None = None,
    present: np.ndarray | None = None,
) -> Moments:
    """Mean and mean-of-squares ``(3, x, y, z)`` of one 3D member over its TTA passes.

    Args:
        member: a 3D ensemble member.
        image: ``(4, x, y, z)`` preprocessed image.
        options: prediction options.
        device: where the network runs.
        precision: effective precision (``fp32``, ``bf16`` or ``fp16``).
        flips: the flips this member runs (:func:`~cascadeseg.inference.ensemble.flip_plan`);
            ``None``: all with ``options.tta``, the identity without.
        estimate_memory: with ``sliding_window="auto"``, estimate the memory of a whole-volume
            pass first (a probe pass, once per network) and go straight to the sliding window
            when it exceeds the budget; ``False``: try the whole volume, fall back on an
            out-of-memory error only.
        region: the case's tumour box (``tta_region="tumour"``, :mod:`~.roi`): the passes
            after the case's first run on it only; ``None``: every pass on the whole volume.
        present: the case's sequence availability (:func:`probability_fn`).

    Returns:
        ``(mean, mean_sq, info)``; CPU float32 tensors and a dict with the mode used and, with
        a region, ``covers``: the image box this member's passes cover (``None``: all of it).
    """
    x, pads = _padded_input(member, image, device)
    if flips is None:
        flips = flip_combinations(3) if options.tta else [()]
    forward, per_call, channels_last = _forward_3d(
        member, x, options, device, precision, len(flips), estimate_memory, present
    )
    covers: Box | None = None
    with torch.inference_mode():
        if region is None:
            mean, mean_sq, passes = flip_tta_moments(
                forward, x, spatial_dims=3, flips_per_call=per_call, flips=flips
            )
        else:
            mean, mean_sq, passes, covers = region_flip_moments(
                forward,
                x,
                region,
                flips=flips,
                pads=pads,
                multiple=member.size_divisor,
                flips_per_call=per_call,
            )
    info: dict[str, Any] = {
        "passes": passes,
        "mode": forward.mode,
        "fallbacks": forward.fallbacks,
        "channels_last": channels_last,
        "flips_per_call": per_call,
    }
    if region is not None:
        info["covers"] = None if covers is None else [list(r) for r in covers]
    return crop_padding(mean, pads)[0].cpu(), crop_padding(mean_sq, pads)[0].cpu(), info


# --------------------------------------------------------------------------------------------
# 2D: axial slices


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
    *,
    present: np.ndarray | None = None,
) -> Moments:
    """Mean and mean-of-squares ``(3, x, y, z)`` of one 2D member, slice by slice.

    Batches of ``options.batch_slices`` axial slices go through the network with in-plane flip
    TTA (``flips``, as for :func:`member_moments_3d`); on an out-of-memory error the batch is
    halved and the slices retried. ``present``: the case's sequence availability
    (:func:`probability_fn`).
    """
    depth = image.shape[-1]
    spatial = image.shape[1:3]
    mean = torch.zeros((3, *spatial, depth))
    mean_sq = torch.zeros((3, *spatial, depth))
    fn = probability_fn(member, precision, device, compile_network=options.compile, present=present)
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
# either


def member_moments(
    member: LoadedModel,
    image: np.ndarray,
    options: PredictOptions,
    device: torch.device,
    precision: str,
    flips: Sequence[tuple[int, ...]] | None = None,
    *,
    estimate_memory: bool = True,
    region: TumourRegion | None = None,
    present: np.ndarray | None = None,
) -> Moments:
    """:func:`member_moments_3d` or :func:`member_moments_2d`, by the member's spatial dims.

    Out of memory outside the network call (the TTA sums, the padded input) retries the member
    with sliding windows only; if that fails too, the error propagates. A ``region``
    (``tta_region="tumour"``) is for 3D members only: a 2D member is refused. ``present``: the
    case's sequence availability ``(4,)`` (1 present, 0 missing; ``None``: all), given to
    members with the ``mask`` fill.
    """
    run: Callable[..., Moments] = functools.partial(member_moments_2d, present=present)
    if region is not None:
        check_tta_region([member], "tumour")
    if member.spatial_dims == 3:
        run = functools.partial(
            member_moments_3d, estimate_memory=estimate_memory, region=region, present=present
        )
    box = None if region is None else region.box
    try:
        return run(member, image, options, device, precision, flips)
    except Exception as exc:
        if not is_out_of_memory(exc) or options.sliding_window == "always":
            raise
    free_memory(device)  # outside the except block: its traceback holds the failed tensors
    if region is not None:
        region.box = box  # the retry runs the case's first pass again if this member ran it
    fallback = dataclasses.replace(options, sliding_window="always")
    mean, mean_sq, info = run(member, image, fallback, device, precision, flips)
    info["fallbacks"] = ["out of memory: member retried with sliding windows"]
    return mean, mean_sq, info


def predict_volume(
    network: nn.Module,
    image: np.ndarray,
    *,
    device: torch.device,
    precision: str = "fp32",
    slice_context: int | None = None,
    tta: bool = False,
    sliding_window: str = FALLBACK,
    overlap: float = 0.5,
    roi_size: Sequence[int] | None = None,
    batch_slices: int = 16,
    missing_fill: str | None = None,
) -> np.ndarray:
    """Region probabilities of a whole preprocessed volume by a network in memory.

    The predictor's path for one member (:func:`member_moments`), for a network that is no
    checkpoint: a model being trained (training's validation), say.

    Args:
        network: a registered network (``spatial_dims``, ``in_channels``, ``output_kind``,
            ``size_multiple``) in the mode it should run in (``eval()`` for validation), on
            ``device``.
        image: ``(4, X, Y, Z)`` float32 preprocessed image.
        device: where ``network`` runs.
        precision: autocast precision (``fp32``, ``bf16``, ``fp16``).
        slice_context: a 2D network's neighbouring slices on each side (default: what its
            ``in_channels`` implies).
        tta: flip test-time augmentation (8 flips in 3D, 4 in 2D).
        sliding_window: :data:`FALLBACK` (default: the whole volume, as the two-stage paper
            segments it, and a sliding window only after an out-of-memory error) or a predict
            policy (``auto``: a memory estimate first; ``always``; ``never``).
        overlap: sliding-window overlap.
        roi_size: sliding-window size (default 128 per axis).
        batch_slices: axial slices per network call of a 2D network.
        missing_fill: the network's fill of missing sequences (``mask``: it takes the
            availability channels, all present here; :mod:`cascadeseg.data.missing`).

    Returns:
        ``(3, X, Y, Z)`` float32 probabilities ``[WT, TC, ET]``.
    """
    member = member_of_network(
        network,
        slice_context=slice_context,
        patch_size=roi_size,
        device=device,
        missing_fill=missing_fill,
    )
    options = PredictOptions(
        tta=tta,
        sliding_window="auto" if sliding_window == FALLBACK else sliding_window,
        overlap=overlap,
        device=str(device),
        batch_slices=batch_slices,
        channels_last=False,
        progress=False,
    )
    mean, _, _ = member_moments(
        member, image, options, device, precision, estimate_memory=sliding_window != FALLBACK
    )
    return mean.numpy()
