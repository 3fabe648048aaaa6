"""Refuse a training patch before any crop is allocated: larger than every volume, or too large
for the memory the machine has (:func:`check_patch_size`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from cascadeseg.errors import ConfigError
from cascadeseg.runtime import meminfo_available_bytes

#: Bytes per voxel of a training crop, not counting the image channels (float32 each): the int64
#: label, three float32 region masks and the bool brain mask of an item.
CROP_LABEL_BYTES_PER_VOXEL = 8 + 3 * 4 + 1
#: A lower bound of what the network needs per voxel of a crop to train: two full-resolution
#: float32 feature maps of 8 channels (the narrowest recipe's first level, once forward and once
#: for its gradient). Real networks need several times more; the bound only catches patches that
#: cannot fit at all.
MIN_NETWORK_BYTES_PER_VOXEL = 2 * 8 * 4


def available_memory_bytes() -> int | None:
    """Memory the system can still give (``MemAvailable`` on Linux), or None where unknown."""
    available = meminfo_available_bytes()
    if available is not None:
        return available
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def check_patch_size(
    patch_size: Sequence[int],
    shapes: Sequence[Sequence[int]],
    *,
    batch_size: int = 1,
    channels: int = 4,
    available_bytes: int | None = None,
    key: str = "data.patch_size",
) -> None:
    """Reject a training patch that no volume fills, or that cannot fit in memory, before any
    crop is allocated.

    A volume smaller than the patch is zero-padded (that is fine for a few small cases), but a
    patch larger than every preprocessed volume along an axis is mostly padding on every crop,
    and usually a typo (``500`` for ``50``) that would end in the kernel killing the run.

    Args:
        patch_size: the crop ``(X, Y, Z)`` (3D) or ``(H, W)`` (2D slices) in voxels.
        shapes: the spatial shapes of the preprocessed volumes (their first
            ``len(patch_size)`` axes are compared).
        batch_size: crops per batch.
        channels: image channels per crop.
        available_bytes: memory available; ``None`` reads it from the system
            (:func:`available_memory_bytes`).
        key: the setting named in the message.

    Raises:
        ConfigError: ``"data.patch_size=[500, 500, 500]: larger than every preprocessed volume
            on axis 0 (500 > 140 voxels; volumes from 120x150x118 to 140x172x136) ..."`` or
            ``"... needs at least 25.3 GB for one batch of crops, 12.1 GB available"``.
    """
    patch = [int(s) for s in patch_size]
    if any(s < 1 for s in patch):
        raise ConfigError(f"{key}={patch}: every size must be at least 1 voxel")
    dims = len(patch)
    if shapes:
        largest = [max(int(shape[i]) for shape in shapes) for i in range(dims)]
        smallest = [min(int(shape[i]) for shape in shapes) for i in range(dims)]
        for axis, (size, limit) in enumerate(zip(patch, largest)):
            if size > limit:
                sizes = "x".join(map(str, smallest)), "x".join(map(str, largest))
                raise ConfigError(
                    f"{key}={patch}: larger than every preprocessed volume on axis {axis} "
                    f"({size} > {limit} voxels; volumes from {sizes[0]} to {sizes[1]}); choose "
                    f"at most {largest}"
                )
    per_voxel = channels * 4 + CROP_LABEL_BYTES_PER_VOXEL + MIN_NETWORK_BYTES_PER_VOXEL
    needed = batch_size * math.prod(patch) * per_voxel
    available = available_memory_bytes() if available_bytes is None else available_bytes
    if available is not None and needed > available:
        raise ConfigError(
            f"{key}={patch}: a batch of {batch_size} such crops needs at least "
            f"{needed / 1e9:.1f} GB to train, {available / 1e9:.1f} GB of memory available; "
            f"choose a smaller patch or batch"
        )
