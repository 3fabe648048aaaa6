"""Which training case a 3D crop comes from: uniform, or balanced over kinds of tumour.

A case's *kind* (:func:`case_kind`) is whether its tumour enhances: ``enhancing`` (it holds
enhancing tumour, like most high-grade gliomas), ``non-enhancing`` (a tumour without enhancing
tumour, like most lower-grade gliomas: its core is non-enhancing tumour alone) or ``no tumour``.
Drawn uniformly, a kind that few training cases have is rarely seen: cases without enhancing
tumour are about 15-25% of BraTS-like data (BraTS 2019: 76 of 335 training cases are
lower-grade), and their non-enhancing core, which looks like neither the necrosis of enhancing
tumours nor edema, then stays unlearnt (tumour-core Dice near 0 on such cases after a short run).

``data.case_balance`` = ``p`` weights each case by ``1 / n_k ** p``, with ``n_k`` the number of
training cases of its kind: ``p = 0`` is uniform (both papers), ``p = 1`` gives every kind an
equal share of the crops, values between interpolate (``0.5``: the square-root re-balancing of
long-tailed classification). Neither paper re-balances; nnU-Net balances *voxels* (a third of
its crops are centred on a randomly chosen foreground class), which does not change how often a
rare kind of *case* is seen.

Why kinds and not every set of labels (*composition*, :func:`composition`): balancing the
compositions also splits the enhancing tumours by whether necrosis was drawn. In a run whose
training split held no case without enhancement (25 cases: 20 with necrosis, 5 without), it
gave the 5 enhancing tumours without necrosis half the crops and nothing to the kind it is for;
tumour-core Dice on 12 held-out cases without enhancing tumour fell from 0.22 (uniform) to 0.02
(``python experiments/no_et_study.py``, data seed 2026, 600 steps, 2026-11-26). The kinds only
move crops towards a kind of tumour that is present and rare.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

from cascadeseg.data.labels import ET

#: Stream of the case draw, separate from the crop's own random stream (so a run with the
#: balance off draws exactly the crops it drew before the option existed).
CASE_STREAM = 7

#: The kinds of :func:`case_kind`, in the order the training log lists them.
KINDS: tuple[str, ...] = ("enhancing", "non-enhancing", "no tumour")


def composition(label: np.ndarray) -> tuple[int, ...]:
    """The sorted tumour labels (> 0) present in ``label`` (any shape, internal labels)."""
    return tuple(int(v) for v in np.unique(label) if v > 0)


def case_kind(label: np.ndarray) -> str:
    """The case's kind of tumour (:data:`KINDS`) from its internal label map (any shape): two
    passes over the voxels, no sort (every training case is asked once, at start-up)."""
    if not label.any():
        return "no tumour"
    return "enhancing" if bool((label == ET).any()) else "non-enhancing"


def balanced_case_weights(groups: Sequence[Hashable], power: float) -> np.ndarray:
    """Probability of drawing each case, ``∝ 1 / n_g ** power`` (sums to 1).

    Args:
        groups: one group per case (its kind, :func:`case_kind`); ``n_g`` counts the cases of
            each group.
        power: 0 (uniform) to 1 (each group an equal share).

    Returns:
        ``(len(groups),)`` float64 probabilities.
    """
    if not groups:
        raise ValueError("no cases to weight")
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"power must lie in [0, 1], got {power}")
    counts = Counter(groups)
    weights = np.array([counts[g] ** -power for g in groups], dtype=np.float64)
    return weights / weights.sum()


def group_shares(
    groups: Sequence[Hashable], weights: np.ndarray
) -> dict[Hashable, tuple[int, float]]:
    """``{group: (cases, share of the draws)}``, for the training log."""
    shares: dict[Hashable, tuple[int, float]] = {}
    for group, w in zip(groups, weights, strict=True):
        n, s = shares.get(group, (0, 0.0))
        shares[group] = (n + 1, s + float(w))
    return shares


def draw_case(seed: int, epoch: int, index: int, n_cases: int, weights: np.ndarray | None) -> int:
    """The case of item ``index`` of ``epoch``: ``index % n_cases`` without weights (every case
    once per pass), else a draw from ``weights`` that depends on (seed, epoch, index) only."""
    if weights is None:
        return index % n_cases
    rng = np.random.default_rng([int(seed), int(epoch), int(index), CASE_STREAM])
    return int(rng.choice(n_cases, p=weights))
