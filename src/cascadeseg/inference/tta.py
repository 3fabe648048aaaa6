"""Flip test-time augmentation (two-stage paper, sec. 3.3).

The input is flipped along every combination of its spatial axes, each flipped input goes through
the network, each output is flipped back, and the probabilities are averaged: 2^3 = 8 passes for a
3D volume, 2^2 = 4 for a 2D slice (the two in-plane axes; flipping the slice stack itself is not a
2D operation). The functions here take any callable ``fn`` that maps a tensor to *probabilities* of
the same spatial shape, so they are independent of the model, the backend and the precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch

ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]


def flip_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """Tensor dimensions to flip, one tuple per TTA pass, the identity ``()`` first.

    Args:
        spatial_dims: 2 (``(B, C, H, W)`` tensors) or 3 (``(B, C, X, Y, Z)`` tensors).

    Returns:
        ``2 ** spatial_dims`` tuples of dimension indices (spatial axes start at 2), e.g. for 2D
        ``[(), (2,), (3,), (2, 3)]``.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    axes = tuple(range(2, 2 + spatial_dims))
    return [combo for r in range(spatial_dims + 1) for combo in combinations(axes, r)]


def flip_tta_sums(
    fn: ProbabilityFn,
    x: torch.Tensor,
    *,
    flips: Sequence[tuple[int, ...]],
    flips_per_call: int = 1,
    total: torch.Tensor | None = None,
    total_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sums of ``fn``'s outputs and of their squares over ``flips`` of ``x``, flipped back.

    Args:
        fn: maps ``(B, C, *spatial)`` to ``(B, K, *spatial)`` probabilities.
        x: ``(B, C, *spatial)`` input.
        flips: the flips to run (items of :func:`flip_combinations`), at least one.
        flips_per_call: flipped copies stacked along the batch axis of one call of ``fn``
            (see :func:`flip_tta_moments`).
        total, total_sq: ``(B, K, *spatial)`` sums to add into, in place (a view of larger
            sums: a crop's passes added into the crop of the whole volume's sums); ``None``:
            new tensors.

    Returns:
        ``(total, total_sq, passes)``: float32 sums and the number of passes added.
    """
    if flips_per_call < 1:
        raise ValueError(f"flips_per_call must be >= 1, got {flips_per_call}")
    if not flips:
        raise ValueError("flips must name at least one flip")
    batch = x.shape[0]
    for start in range(0, len(flips), flips_per_call):
        group = flips[start : start + flips_per_call]
        inputs = [torch.flip(x, dims) if dims else x for dims in group]
        xin = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
        del inputs
        outs = fn(xin).float()
        for i, dims in enumerate(group):
            out = outs[i * batch : (i + 1) * batch]
            if dims:
                out = torch.flip(out, dims)
            if total is None or total_sq is None:
                total, total_sq = out.clone(), out * out
            else:
                total += out
                total_sq += out * out
            del out
        del outs, xin
    assert total is not None and total_sq is not None
    return total, total_sq, len(flips)


def flip_tta_moments(
    fn: ProbabilityFn,
    x: torch.Tensor,
    *,
    spatial_dims: int,
    tta: bool = True,
    flips_per_call: int = 1,
    flips: Sequence[tuple[int, ...]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """First and second moments of ``fn`` over the flips of ``x``.

    Running sums are kept instead of the 8 outputs (:func:`flip_tta_sums`), so memory stays at
    two output-sized tensors whatever the number of passes (a whole-brain output is ~100 MB per
    pass), plus what one call of ``fn`` needs.

    Args:
        fn: maps ``(B, C, *spatial)`` to ``(B, K, *spatial)`` probabilities.
        x: ``(B, C, *spatial)`` input.
        spatial_dims: 2 or 3 (number of trailing spatial axes of ``x``).
        tta: ``False`` runs the identity pass only.
        flips_per_call: flipped copies stacked along the batch axis of one call of ``fn``
            (``k * B`` inputs per call): fewer, larger calls, for back-ends that run a batch of
            one slowly (PyTorch's CPU 3D convolutions of narrow layers); ``k`` times the memory
            of one pass. The sums are the same up to floating-point rounding (a back-end may
            pick another kernel for another batch size).
        flips: the flips to run (items of :func:`flip_combinations`); ``None``: all of them
            with ``tta``, the identity alone without (a snapshot of a paired snapshot ensemble
            runs its own share, see :func:`paired_flip_indices`).

    Returns:
        ``(mean, mean_of_squares, passes)``: float32 ``(B, K, *spatial)`` tensors and the number
        of passes averaged. The voxel-wise variance over passes is ``mean_of_squares - mean**2``.
    """
    if flips is None:
        flips = flip_combinations(spatial_dims) if tta else [()]
    total, total_sq, n = flip_tta_sums(fn, x, flips=flips, flips_per_call=flips_per_call)
    return total / n, total_sq / n, n


def paired_flip_indices(n_snapshots: int, n_flips: int) -> list[list[int]]:
    """Which flips each snapshot runs in the paired snapshot ensemble.

    The two-stage paper (sec. 3.3) averages eight maps: "for each snapshot, the input images
    are used different flipping", i.e. 8 snapshots x 8 flips paired one to one, 8 passes.
    For other counts the rule here is: pass ``k`` for ``k = 0 .. max(n_snapshots, n_flips) - 1``
    runs snapshot ``k mod n_snapshots`` with flip ``k mod n_flips``. So every snapshot and every
    flip is used at least once, and there are ``max(n_snapshots, n_flips)`` passes:

    * ``n_snapshots == n_flips``: snapshot ``i`` with flip ``i`` (the paper);
    * fewer snapshots (3 with 8 flips): the flips are dealt out in turn, snapshot 0 gets
      flips 0, 3, 6, snapshot 1 flips 1, 4, 7, snapshot 2 flips 2, 5 (8 passes);
    * more snapshots (10 with 8 flips): snapshot ``i`` gets flip ``i mod 8`` (10 passes).

    Args:
        n_snapshots: snapshots of one run (>= 1).
        n_flips: flips available (``len(flip_combinations(d))``, or 1 without TTA).

    Returns:
        For each snapshot, the indices into the flip list it runs (ascending).
    """
    if n_snapshots < 1 or n_flips < 1:
        raise ValueError(f"need >= 1 snapshot and flip, got {n_snapshots} and {n_flips}")
    out: list[list[int]] = [[] for _ in range(n_snapshots)]
    for k in range(max(n_snapshots, n_flips)):
        flip = k % n_flips
        if flip not in out[k % n_snapshots]:
            out[k % n_snapshots].append(flip)
    return [sorted(indices) for indices in out]


def flip_tta(fn: ProbabilityFn, x: torch.Tensor, *, spatial_dims: int) -> torch.Tensor:
    """Mean of ``fn`` over all ``2 ** spatial_dims`` flips of ``x``, each output flipped back.

    Args:
        fn: maps ``(B, C, *spatial)`` inputs to ``(B, K, *spatial)`` probabilities.
        x: ``(B, C, X, Y, Z)`` (3D) or ``(B, C, H, W)`` (2D) input.
        spatial_dims: 3 (8 passes) or 2 (4 passes, in-plane flips).

    Returns:
        ``(B, K, *spatial)`` float32 mean probabilities.
    """
    mean, _, _ = flip_tta_moments(fn, x, spatial_dims=spatial_dims)
    return mean
