"""Memory policy of whole-volume inference: how much a pass may use, what it needs, and what to do
when it does not fit.

* :func:`memory_budget`: what a whole-volume pass may use (70% of the device's free memory, or a
  given budget); :func:`probe_bytes_per_voxel` / :func:`bytes_per_voxel`: what a network needs per
  input voxel, measured once per network on a small probe input;
* :func:`default_flips_per_call`: how many TTA flips to stack into one network call;
* :class:`AdaptiveForward`: the whole volume in one pass, with an automatic fallback to the
  Gaussian sliding window of :mod:`cascadeseg.inference.sliding` (shrinking the window further if
  even that runs out of memory), so a CUDA out-of-memory error never ends a run.

Policies (``--sliding-window``): ``never`` (whole volume, errors propagate), ``always`` (sliding
window only) and ``auto`` (estimate the memory first, when an estimate is given; try the whole
volume when it fits the budget; fall back on an out-of-memory error).
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import nn

from cascadeseg.inference.sliding import ProbabilityFn, sliding_window, window_size
from cascadeseg.runtime import meminfo_available_bytes

POLICIES: tuple[str, ...] = ("auto", "always", "never")

# Safety factor of the CPU memory estimate: live tensors at the widest full-resolution level (the
# block input, two convolution outputs, the residual sum and the skip kept for the decoder, plus
# the input and output). Checked on the two-stage network; the OOM fallback covers CUDA anyway.
CPU_ACTIVATION_FACTOR = 6.0
# Fraction of the free memory a whole-volume pass may use.
MEMORY_FRACTION = 0.7


# --------------------------------------------------------------------------------------------
# what a pass needs, what it may use


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


def memory_budget(budget_gb: float | None, device: torch.device) -> float:
    """Bytes a whole-volume pass may use: ``budget_gb`` when given, else
    :data:`MEMORY_FRACTION` of the free memory of ``device``."""
    if budget_gb is not None:
        return budget_gb * 2**30
    return available_memory_bytes(device) * MEMORY_FRACTION


_PROBED: weakref.WeakKeyDictionary[nn.Module, float] = weakref.WeakKeyDictionary()


def bytes_per_voxel(network: nn.Module, in_channels: int, device: torch.device, side: int) -> float:
    """:func:`probe_bytes_per_voxel` of a 3D ``network``, probed once per network (kept while the
    network lives)."""
    if network not in _PROBED:
        _PROBED[network] = probe_bytes_per_voxel(network, in_channels, 3, device, side=side)
    return _PROBED[network]


def default_flips_per_call(
    tta: bool,
    device: torch.device,
    per_voxel: float | None,
    shape: Sequence[int],
    budget: float,
) -> int:
    """TTA flips stacked per network call when ``flips_per_call`` is not set.

    CPU: 2 when a pass of two fits ``budget`` (see
    :class:`~cascadeseg.inference.options.PredictOptions`). CUDA: the most of 8, 4 or 2 that
    fits: one whole-brain flip does not fill an H100 (measured 2026-11-26 at paper width,
    144x176x160, bf16: 8 flips one per call 1.38 s, all 8 in one call 0.58 s;
    docs/performance.md). Without a memory estimate (``per_voxel`` None): 1.
    """
    if not tta or per_voxel is None:
        return 1
    candidates = (2,) if device.type == "cpu" else (8, 4, 2)
    for k in candidates:
        if estimate_forward_bytes(per_voxel, k, shape) <= budget:
            return k
    return 1


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
