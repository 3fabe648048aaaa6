"""Train/validation(/test) splits of case ids: k-fold and the CU-Net 3:1:1 hold-out.

Splits depend only on the *set* of ids and the seed (ids are sorted first), so the same data
folder gives the same split on any machine. Optional ``groups`` keep the cases of one group
(e.g. several time points of one patient in BraTS 2024) on the same side of every split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cascadeseg.errors import ConfigError, InputError
from cascadeseg.fsutil import write_json_atomic


def _grouped(
    case_ids: Sequence[str], groups: Mapping[str, str] | None, seed: int
) -> list[list[str]]:
    """The groups (lists of ids), in a seeded random order."""
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"duplicated case ids: {', '.join(dupes[:5])}")
    by_group: dict[str, list[str]] = {}
    for case_id in ids:
        key = groups.get(case_id, case_id) if groups is not None else case_id
        by_group.setdefault(key, []).append(case_id)
    members = [by_group[k] for k in sorted(by_group)]
    order = np.random.default_rng(seed).permutation(len(members))
    return [members[i] for i in order]


def kfold_split(
    case_ids: Sequence[str],
    k: int = 5,
    fold: int = 0,
    seed: int = 0,
    *,
    groups: Mapping[str, str] | None = None,
    strata: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Fold ``fold`` of a ``k``-fold cross-validation (two-stage paper: 5 folds).

    The (shuffled) groups are dealt into ``k`` folds of near-equal size
    (``numpy.array_split``); fold ``fold`` is the validation set. With ``strata`` (a stratum
    per case id, e.g. its kind of tumour) the folds are stratified instead: the shuffled groups
    are ordered stratum by stratum and dealt round-robin, so every fold holds about ``1/k`` of
    each stratum (scikit-learn's ``StratifiedGroupKFold`` aims at the same). A rare stratum
    then stays mostly in training: 3 cases of 32 in 5 folds leave at most 1 for validation,
    where an unstratified deal may put 2 or 3 there.

    Returns:
        ``{"train": [...], "val": [...]}``, each sorted.

    Raises:
        ConfigError: ``k < 2``, ``fold`` outside ``[0, k)`` or fewer groups than folds.
    """
    if k < 2:
        raise ConfigError(f"k-fold split needs k >= 2, got {k}")
    if not 0 <= fold < k:
        raise ConfigError(f"fold must be in [0, {k}), got {fold}")
    grouped = _grouped(case_ids, groups, seed)
    if len(grouped) < k:
        raise ConfigError(f"{k}-fold split needs at least {k} cases, got {len(grouped)}")
    if strata is None:
        folds = np.array_split(np.arange(len(grouped)), k)
        val_groups = set(folds[fold].tolist())
    else:
        # A group's stratum is its first case's; a stable sort keeps the seeded order inside.
        order = sorted(range(len(grouped)), key=lambda g: strata[grouped[g][0]])
        val_groups = set(order[fold::k])
    val = sorted(i for g in val_groups for i in grouped[g])
    train = sorted(i for g in range(len(grouped)) if g not in val_groups for i in grouped[g])
    return {"train": train, "val": val}


def split_sizes(n: int, ratios: Sequence[float]) -> list[int]:
    """Sizes of ``n`` items split by ``ratios`` (largest remainder; sums to ``n``).

    ``split_sizes(210, (3, 1, 1)) == [126, 42, 42]`` (the CU-Net paper's split).
    """
    total = float(sum(ratios))
    if total <= 0 or any(r < 0 for r in ratios):
        raise ConfigError(f"split ratios must be non-negative and not all zero, got {ratios}")
    exact = [n * r / total for r in ratios]
    sizes = [int(np.floor(e)) for e in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def holdout_split(
    case_ids: Sequence[str],
    ratios: Sequence[float] = (3, 1, 1),
    seed: int = 0,
    *,
    groups: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Train/validation/test hold-out split (CU-Net paper, sec. 3.1: 3:1:1, 126/42/42 cases).

    With groups, the sizes are counted in groups.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.
    """
    if len(ratios) != 3:
        raise ConfigError(f"a hold-out split needs 3 ratios (train, val, test), got {ratios}")
    grouped = _grouped(case_ids, groups, seed)
    sizes = split_sizes(len(grouped), ratios)
    out: dict[str, list[str]] = {}
    start = 0
    for name, size in zip(("train", "val", "test"), sizes):
        out[name] = sorted(i for g in grouped[start : start + size] for i in g)
        start += size
    return out


def save_split(split: Mapping[str, Sequence[str]], path: str | Path) -> None:
    """Write a split as JSON (atomically: temp file, then rename)."""
    write_json_atomic({k: list(v) for k, v in split.items()}, path, indent=1)


def load_split(path: str | Path) -> dict[str, list[str]]:
    """Read a split written by :func:`save_split`.

    Raises:
        InputError: the file is missing, not JSON, or not a mapping of name -> list of ids.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read split ({exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(i, str) for i in v) for v in data.values()
    ):
        raise InputError(f"{path}: a split file must map names to lists of case ids")
    return {str(k): list(v) for k, v in data.items()}
