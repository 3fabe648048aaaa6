"""Whole-volume inference with an automatic Gaussian sliding-window fallback.

The two-stage paper segments the whole brain in one pass (sec. 3.3): the volume is padded to a
multiple of the network's down-sampling factor and goes through the network at once. When that does
not fit in memory, :class:`AdaptiveForward` frees what it can and falls back to a Gaussian-weighted
sliding window (MONAI's :func:`monai.inferers.sliding_window_inference` with ``mode="gaussian"``,
``sigma_scale=0.125``, the weighting nnU-Net uses as well), shrinking the window further if even
that runs out of memory, so a CUDA out-of-memory error never ends a run.

Policies (``--sliding-window``): ``never`` (whole volume, errors propagate), ``always`` (sliding
window only) and ``auto`` (estimate the memory first; try the whole volume when it fits the budget;
fall back on an out-of-memory error).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from cascadeseg.runtime import meminfo_available_bytes

ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]
Pads = tuple[tuple[int, int], ...]

POLICIES: tuple[str, ...] = ("auto", "always", "never")

# Safety factor of the CPU memory estimate: live tensors at the widest full-resolution level (the
# block input, two convolution outputs, the residual sum and the skip kept for the decoder, plus
# the input and output). Checked on the two-stage network; the OOM fallback covers CUDA anyway.
CPU_ACTIVATION_FACTOR = 6.0
# Fraction of the free memory a whole-volume pass may use.
MEMORY_FRACTION = 0.7


# --------------------------------------------------------------------------------------------
# padding


def pad_amounts(shape: Sequence[int], multiple: int | Sequence[int]) -> Pads:
    """Padding ``(before, after)`` per axis that brings ``shape`` up to a multiple.

    The padding is split evenly, the odd voxel after (as nnU-Net pads), so the volume stays
    centred; this keeps flip TTA symmetric.

    Args:
        shape: spatial shape in voxels.
        multiple: one multiple for every axis, or one per axis.

    Returns:
        One ``(before, after)`` pair per axis, e.g. ``pad_amounts((155,), 8) == ((2, 3),)``.
    """
    multiples = [multiple] * len(shape) if isinstance(multiple, int) else list(multiple)
    if len(multiples) != len(shape):
        raise ValueError(f"{len(multiples)} multiples for {len(shape)} axes")
    pads = []
    for size, m in zip(shape, multiples):
        if m < 1:
            raise ValueError(f"multiple must be >= 1, got {m}")
        total = (-int(size)) % int(m)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def pad_to_multiple(
    x: torch.Tensor, multiple: int | Sequence[int], *, value: float = 0.0
) -> tuple[torch.Tensor, Pads]:
    """Pad the spatial axes of ``x`` (all axes after the first two) to a multiple.

    Args:
        x: ``(B, C, *spatial)`` tensor.
        multiple: e.g. 8 for a network with three stride-2 down-samplings.
        value: fill value (0 = background after z-scoring over the brain).

    Returns:
        ``(padded, pads)``; :func:`crop_padding` with the same ``pads`` undoes it.
    """
    pads = pad_amounts(tuple(x.shape[2:]), multiple)
    if not any(before or after for before, after in pads):
        return x, pads
    flat: list[int] = []
    for before, after in reversed(pads):  # F.pad lists the last axis first
        flat.extend((before, after))
    return torch.nn.functional.pad(x, flat, mode="constant", value=value), pads


def crop_padding(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    """Remove padding added by :func:`pad_to_multiple` from the trailing spatial axes of ``x``."""
    spatial = x.shape[x.ndim - len(pads) :]
    index = [slice(None)] * (x.ndim - len(pads))
    index += [slice(before, size - after) for (before, after), size in zip(pads, spatial)]
    return x[tuple(index)]


# --------------------------------------------------------------------------------------------
# sliding window


def window_size(
    roi_size: Sequence[int], shape: Sequence[int], multiple: int | Sequence[int]
) -> tuple[int, ...]:
    """The sliding-window size actually used: ``roi_size`` capped to ``shape``, a multiple.

    Args:
        roi_size: requested window in voxels (e.g. the training patch, 128^3).
        shape: spatial shape of the (padded) input; each side a multiple of ``multiple``.
        multiple: network down-sampling factor(s).

    Returns:
        Window size per axis, each ``multiple <= size <= shape`` and divisible by ``multiple``.
    """
    multiples = [multiple] * len(shape) if isinstance(multiple, int) else list(multiple)
    out = []
    for roi, size, m in zip(roi_size, shape, multiples):
        side = min(int(roi), int(size))
        side = max(m, (side // m) * m)
        out.append(side)
    return tuple(out)


def sliding_window(
    fn: ProbabilityFn,
    x: torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    sigma_scale: float = 0.125,
    multiple: int | Sequence[int] = 1,
) -> torch.Tensor:
    """Gaussian-weighted sliding-window inference (MONAI's implementation).

    Overlapping windows are blended with a Gaussian importance map (``sigma_scale`` times the
    window size, 0.125 as in nnU-Net and MONAI) so that the less reliable window borders count
    less. The two-stage paper does not use a sliding window; this is the fallback when the whole
    volume does not fit in memory.

    Args:
        fn: maps ``(b, C, *roi)`` to ``(b, K, *roi)`` probabilities.
        x: ``(B, C, *spatial)`` input, each spatial side a multiple of ``multiple``.
        roi_size: requested window (capped to the input, rounded to ``multiple``).
        overlap: fraction of the window shared by neighbours (nnU-Net: 0.5).
        sw_batch_size: windows per network call.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        multiple: network down-sampling factor(s), so that every window fits the network.

    Returns:
        ``(B, K, *spatial)`` float32 blended probabilities.
    """
    from monai.inferers import sliding_window_inference

    roi = window_size(roi_size, tuple(x.shape[2:]), multiple)
    out = sliding_window_inference(
        x,
        roi_size=roi,
        sw_batch_size=sw_batch_size,
        predictor=lambda t: fn(t).float(),
        overlap=overlap,
        mode="gaussian",
        sigma_scale=sigma_scale,
        padding_mode="constant",
        cval=0.0,
    )
    assert isinstance(out, torch.Tensor)
    return out.as_tensor() if hasattr(out, "as_tensor") else out


# --------------------------------------------------------------------------------------------
# memory


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (CUDA, CPU allocator or Python)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text
    )


def free_memory(device: torch.device | str | None = None) -> None:
    """Release cached memory after an out-of-memory error (garbage collection, CUDA cache)."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


def available_memory_bytes(device: torch.device | str) -> int:
    """Free memory on ``device`` in bytes (CUDA: ``mem_get_info``; CPU: ``MemAvailable``)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    available = meminfo_available_bytes()
    return (1 << 62) if available is None else available  # unknown: the error fallback decides


def probe_bytes_per_voxel(
    net: nn.Module, in_channels: int, spatial_dims: int, device: torch.device | str, side: int = 32
) -> float:
    """Peak forward-pass memory per input voxel, measured on a small probe input.

    On CUDA the allocator's peak during the probe pass is measured. On the CPU there is no such
    counter; the widest module output per input voxel times :data:`CPU_ACTIVATION_FACTOR` is
    used instead (activation memory of a fully convolutional network grows linearly with voxels).

    Args:
        net: eval-mode network.
        in_channels: input channels.
        spatial_dims: 2 or 3.
        device: where ``net`` lives.
        side: probe side in voxels (a multiple of the down-sampling factor).

    Returns:
        Bytes per input voxel (float).
    """
    device = torch.device(device)
    dtype = next((p.dtype for p in net.parameters()), torch.float32)
    probe = torch.zeros((1, in_channels, *([side] * spatial_dims)), device=device, dtype=dtype)
    voxels = float(side**spatial_dims)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            net(probe)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        return max(float(peak), 1.0) / voxels
    widest = [0.0]

    def hook(_module: nn.Module, _inp: object, out: object) -> None:
        tensors = [out] if isinstance(out, torch.Tensor) else []
        if isinstance(out, (tuple, list)):
            tensors = [t for t in out if isinstance(t, torch.Tensor)]
        for t in tensors:
            widest[0] = max(widest[0], float(t.numel() * t.element_size()))

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        with torch.inference_mode():
            net(probe)
    finally:
        for h in handles:
            h.remove()
    return widest[0] * CPU_ACTIVATION_FACTOR / voxels


def estimate_forward_bytes(bytes_per_voxel: float, batch: int, shape: Sequence[int]) -> float:
    """Estimated peak memory (bytes) of one pass over a ``(batch, C, *shape)`` input."""
    return bytes_per_voxel * batch * math.prod(int(s) for s in shape)


# --------------------------------------------------------------------------------------------
# whole volume with fallback


class AdaptiveForward:
    """Whole-volume pass with automatic fallback to a sliding window.

    Call it like ``fn``: ``(B, C, *spatial)`` in (each side a multiple of ``multiple``),
    ``(B, K, *spatial)`` probabilities out. The decision is kept across calls, so after the first
    TTA pass runs out of memory the remaining passes go straight to the sliding window.

    Attributes:
        mode: ``"whole"`` or ``"sliding"``: what the next call will do.
        roi_size: the current sliding-window size (shrinks after out-of-memory errors).
        fallbacks: human-readable notes of every fallback taken (for the per-case JSON).
    """

    def __init__(
        self,
        fn: ProbabilityFn,
        *,
        policy: str = "auto",
        roi_size: Sequence[int],
        overlap: float = 0.5,
        multiple: int | Sequence[int] = 8,
        budget_bytes: float | None = None,
        estimate_bytes: Callable[[Sequence[int]], float] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"sliding-window policy must be one of {POLICIES}, got {policy!r}")
        self.fn = fn
        self.policy = policy
        self.roi_size = tuple(int(s) for s in roi_size)
        self.overlap = overlap
        self.multiple = multiple
        self.budget_bytes = budget_bytes
        self.estimate_bytes = estimate_bytes
        self.device = device
        self.mode = "sliding" if policy == "always" else "whole"
        self.fallbacks: list[str] = []
        self._checked_estimate = False

    def _min_side(self, axis: int) -> int:
        m = self.multiple if isinstance(self.multiple, int) else self.multiple[axis]
        return int(m)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "whole" and self.policy == "auto" and not self._checked_estimate:
            self._checked_estimate = True
            if self.estimate_bytes is not None and self.budget_bytes is not None:
                need = self.estimate_bytes(tuple(x.shape[2:]))
                if need > self.budget_bytes:
                    self.mode = "sliding"
                    self.fallbacks.append(
                        f"estimated {need / 2**30:.1f} GiB > budget "
                        f"{self.budget_bytes / 2**30:.1f} GiB: sliding window"
                    )
        if self.mode == "whole":
            if self.policy == "never":
                return self.fn(x)
            try:
                return self.fn(x)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
            # Freed here, outside the except block: its traceback holds the failed pass's tensors.
            free_memory(self.device)
            self.mode = "sliding"
            self.fallbacks.append("whole volume out of memory: sliding window")
        return self._sliding(x)

    def _sliding(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                return sliding_window(
                    self.fn, x, roi_size=self.roi_size, overlap=self.overlap, multiple=self.multiple
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
            free_memory(self.device)
            current = window_size(self.roi_size, tuple(x.shape[2:]), self.multiple)
            axis = max(range(len(current)), key=lambda a: current[a])
            smaller = list(current)
            smaller[axis] = max(self._min_side(axis), current[axis] // 2)
            if tuple(smaller) == current:
                raise MemoryError(f"out of memory even with a {current} sliding window")
            self.roi_size = tuple(smaller)
            self.fallbacks.append(f"sliding window out of memory: window {self.roi_size}")
