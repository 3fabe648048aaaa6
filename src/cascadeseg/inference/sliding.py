"""Window arithmetic of whole-volume inference (pure): padding to the network's multiple, window
sizes, and the Gaussian-weighted sliding window.

The two-stage paper segments the whole brain in one pass (sec. 3.3): the volume is padded to a
multiple of the network's down-sampling factor and goes through the network at once. When that
does not fit in memory, the predictor falls back to a Gaussian-weighted sliding window (MONAI's
:func:`monai.inferers.sliding_window_inference` with ``mode="gaussian"``, ``sigma_scale=0.125``, the
weighting nnU-Net uses as well). When to do which is the memory policy of
:mod:`cascadeseg.inference.memory`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]
Pads = tuple[tuple[int, int], ...]


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
    # monai.inferers takes about 2 s to import: only when a sliding window is used.
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
