"""Clusters of a case's lesions: 26-connected components and the boxes they are scored on.

The lesion-wise rules (:mod:`cascadeseg.evaluation.lesions`) never look across far-apart groups of
voxels, so a case is cut into small boxes: the union of every region's masks is labelled once
(:func:`label_union`), and its components ("clusters") are grouped so that no rule set reaches
from one group into another (:func:`group_clusters`). The cost follows the lesions, not the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cascadeseg.evaluation.surface import bounding_box

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a binary 3D mask: ``(int32 labels, count)``."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=_FULL)
    return labels.astype(np.int32, copy=False), int(n)


def union_box(
    *boxes: tuple[slice, ...] | None, shape: Sequence[int], pad: int
) -> tuple[slice, ...]:
    """The smallest box holding every given box (``None`` skipped), grown by ``pad``, clipped to
    ``shape``."""
    lo = [min(b[d].start for b in boxes if b is not None) for d in range(len(shape))]
    hi = [max(b[d].stop for b in boxes if b is not None) for d in range(len(shape))]
    return tuple(slice(max(a - pad, 0), min(b + pad, n)) for a, b, n in zip(lo, hi, shape))


def label_union(
    preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], pad: int
) -> tuple[tuple[slice, ...] | None, np.ndarray]:
    """The 26-connected components ("clusters") of ``OR(all masks)`` on its box grown by ``pad``.

    Every component of every region lies in one cluster (regions are subsets of the union) and
    overlapping components share one; every rule set groups the same clusters
    (:func:`group_clusters`).

    Returns:
        ``(box of the union, int32 cluster labels on that box)``; ``(None, empty)`` when every
        mask is empty.
    """
    union = np.zeros(preds[0].shape, dtype=bool)
    for mask in (*preds, *refs):
        union |= mask
    box = bounding_box(union, pad=pad)
    if box is None:
        return None, np.zeros((0, 0, 0), dtype=np.int32)
    return box, label_components(union[box])[0]


def group_clusters(labels: np.ndarray, reach: int) -> list[tuple[list[int], tuple[slice, ...]]]:
    """Groups of clusters no lesion-wise rule looks across, with the box each is scored on.

    For the BraTS 2023 rules (``reach`` = its dilation) clusters whose boxes, each grown by
    ``reach + 1``, intersect are grouped: clusters in different groups are more than
    ``2 reach + 2`` voxels apart along an axis, so no dilated lesion joins them and no component
    touches a lesion of another group; for panoptica (``reach`` 0) each cluster is a group. Each
    group is scored on its own small box, which is what makes the evaluation of a large grid fast
    (grouping more than needed is harmless).

    Args:
        labels: cluster labels from :func:`label_union`, on a box grown by at least
            ``reach + 1`` voxels.
        reach: the dilation of the rule set (0 for panoptica).

    Returns:
        ``[(cluster ids, group box)]``; a group box holds its clusters' boxes grown by
        ``reach + 1`` voxels (clipped), so erosions, distance transforms and dilations on it
        equal the full-grid ones.
    """
    boxes = {
        c: union_box(b, shape=labels.shape, pad=reach + 1)
        for c, b in enumerate(ndimage.find_objects(labels), start=1)
        if b is not None
    }
    if not reach:
        return [([c], b) for c, b in boxes.items()]
    groups: list[tuple[list[int], tuple[slice, ...]]] = []
    for c, b in boxes.items():  # absorb every group whose box meets this one, until none does
        ids, merged = [c], b
        while any(_meets(g[1], merged) for g in groups):
            for group in [g for g in groups if _meets(g[1], merged)]:
                groups.remove(group)
                ids += group[0]
                merged = union_box(merged, group[1], shape=labels.shape, pad=0)
        groups.append((ids, merged))
    return groups


def _meets(a: tuple[slice, ...], b: tuple[slice, ...]) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b))
