"""Splits: sizes, disjointness, determinism, groups, files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascadeseg.data.splits import (
    holdout_split,
    kfold_split,
    load_split,
    save_split,
    split_sizes,
)
from cascadeseg.errors import ConfigError, InputError

IDS = [f"BraTS2021_{i:05d}" for i in range(23)]


def test_kfold_folds_partition_the_cases() -> None:
    seen: list[str] = []
    for fold in range(5):
        split = kfold_split(IDS, k=5, fold=fold, seed=0)
        assert set(split) == {"train", "val"}
        assert not set(split["train"]) & set(split["val"])
        assert sorted(split["train"] + split["val"]) == IDS
        assert len(split["val"]) in (4, 5)
        assert split["val"] == sorted(split["val"])
        seen += split["val"]
    assert sorted(seen) == IDS  # every case is validated exactly once


def test_kfold_is_deterministic_and_order_independent() -> None:
    a = kfold_split(IDS, k=5, fold=2, seed=7)
    assert a == kfold_split(list(reversed(IDS)), k=5, fold=2, seed=7)
    assert a != kfold_split(IDS, k=5, fold=2, seed=8)


@pytest.mark.parametrize("seed", range(6))
def test_stratified_kfold_spreads_every_kind_over_the_folds(seed: int) -> None:
    ids = [f"c{i:02d}" for i in range(32)]
    kinds = {c: "non-enhancing" if i % 11 == 3 else "enhancing" for i, c in enumerate(ids)}
    kinds["c31"] = "no tumour"
    seen: list[str] = []
    for fold in range(5):
        split = kfold_split(ids, k=5, fold=fold, seed=seed, strata=kinds)
        assert sorted(split["train"] + split["val"]) == ids
        assert len(split["val"]) in (6, 7)
        rare = [c for c in split["val"] if kinds[c] == "non-enhancing"]
        assert len(rare) <= 1  # 3 such cases: at most one per fold
        seen += split["val"]
    assert sorted(seen) == ids
    # The seed still decides which cases of a kind validate.
    folds = {s: kfold_split(ids, k=5, fold=0, seed=s, strata=kinds)["val"] for s in range(4)}
    assert len({tuple(v) for v in folds.values()}) > 1


def test_holdout_is_the_cunet_3_1_1_split() -> None:
    ids = [f"c{i:03d}" for i in range(210)]
    split = holdout_split(ids, ratios=(3, 1, 1), seed=0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [126, 42, 42]
    assert sorted(split["train"] + split["val"] + split["test"]) == ids
    assert len(set(split["train"]) | set(split["val"]) | set(split["test"])) == 210
    assert split == holdout_split(ids, seed=0)


def test_split_sizes_by_hand() -> None:
    assert split_sizes(210, (3, 1, 1)) == [126, 42, 42]
    assert split_sizes(7, (3, 1, 1)) == [4, 2, 1]  # 4.2, 1.4, 1.4: one leftover to the first .4
    assert split_sizes(5, (1, 0, 1)) == [3, 0, 2]
    assert sum(split_sizes(11, (0.6, 0.2, 0.2))) == 11


def test_groups_stay_together() -> None:
    ids = [f"BraTS-GLI-{p:05d}-{t:03d}" for p in range(10) for t in range(2)]
    groups = {i: i[:15] for i in ids}  # patient = id without the time point
    for fold in range(5):
        split = kfold_split(ids, k=5, fold=fold, groups=groups)
        train_patients = {groups[i] for i in split["train"]}
        assert not train_patients & {groups[i] for i in split["val"]}
        assert len(split["val"]) == 4
    held = holdout_split(ids, groups=groups)
    assert [len(held[k]) for k in ("train", "val", "test")] == [12, 4, 4]


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        kfold_split(IDS, k=1)
    with pytest.raises(ConfigError):
        kfold_split(IDS, k=5, fold=5)
    with pytest.raises(ConfigError):
        kfold_split(IDS[:3], k=5)
    with pytest.raises(InputError, match="duplicated"):
        kfold_split([*IDS, IDS[0]], k=5)
    with pytest.raises(ConfigError):
        holdout_split(IDS, ratios=(1, 1))


def test_save_and_load(tmp_path: Path) -> None:
    split = holdout_split(IDS)
    path = tmp_path / "run" / "split.json"
    save_split(split, path)
    assert load_split(path) == split
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]
    (tmp_path / "bad.json").write_text('{"train": [1, 2]}')
    with pytest.raises(InputError, match=r"bad\.json"):
        load_split(tmp_path / "bad.json")
    with pytest.raises(InputError, match="missing"):
        load_split(tmp_path / "missing.json")
