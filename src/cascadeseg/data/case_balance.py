"""Which training case a 3D crop comes from: uniform, or balanced over tumour compositions.

A case's *composition* is the set of tumour labels it contains (e.g. necrosis + edema +
enhancing tumour, or necrosis + edema alone for a glioma without enhancement). Drawn uniformly,
a composition that few training cases have is rarely seen: cases without enhancing tumour are
about 15% of BraTS-like data (lower-grade gliomas), and their non-enhancing core, which looks
like neither the necrosis of enhancing tumours nor edema, then stays unlearnt (tumour-core Dice
near 0 on such cases after a short run).

``data.case_balance`` = ``p`` weights each case by ``1 / n_c ** p``, with ``n_c`` the number of
training cases of its composition: ``p = 0`` is uniform (both papers), ``p = 1`` gives every
composition an equal share of the crops, values between interpolate (``0.5``: the square-root
re-balancing of long-tailed classification). Neither paper re-balances; nnU-Net balances
*voxels* (a third of its crops are centred on a randomly chosen foreground class), which does
not change how often a rare kind of *case* is seen. The labels alone decide, so the balance
holds on any data, with any label convention.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

#: Stream of the case draw, separate from the crop's own random stream (so a run with the
#: balance off draws exactly the crops it drew before the option existed).
CASE_STREAM = 7


def composition(label: np.ndarray) -> tuple[int, ...]:
    """The sorted tumour labels (> 0) present in ``label`` (any shape)."""
    return tuple(int(v) for v in np.unique(label) if v > 0)


def balanced_case_weights(compositions: Sequence[tuple[int, ...]], power: float) -> np.ndarray:
    """Probability of drawing each case, ``∝ 1 / n_c ** power`` (sums to 1).

    Args:
        compositions: one composition per case (:func:`composition`).
        power: 0 (uniform) to 1 (each composition an equal share).

    Returns:
        ``(len(compositions),)`` float64 probabilities.
    """
    if not compositions:
        raise ValueError("no cases to weight")
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"power must lie in [0, 1], got {power}")
    counts = Counter(compositions)
    weights = np.array([counts[c] ** -power for c in compositions], dtype=np.float64)
    return weights / weights.sum()


def composition_shares(
    compositions: Sequence[tuple[int, ...]], weights: np.ndarray
) -> dict[tuple[int, ...], tuple[int, float]]:
    """``{composition: (cases, share of the draws)}``, for the training log."""
    shares: dict[tuple[int, ...], tuple[int, float]] = {}
    for comp, w in zip(compositions, weights, strict=True):
        n, s = shares.get(comp, (0, 0.0))
        shares[comp] = (n + 1, s + float(w))
    return shares


def draw_case(seed: int, epoch: int, index: int, n_cases: int, weights: np.ndarray | None) -> int:
    """The case of item ``index`` of ``epoch``: ``index % n_cases`` without weights (every case
    once per pass), else a draw from ``weights`` that depends on (seed, epoch, index) only."""
    if weights is None:
        return index % n_cases
    rng = np.random.default_rng([int(seed), int(epoch), int(index), CASE_STREAM])
    return int(rng.choice(n_cases, p=weights))
