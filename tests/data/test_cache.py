"""The preprocessing cache: hits, stale and corrupt entries, atomic writes, warm-up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cascadeseg.data import cache as cache_module
from cascadeseg.data.cache import PreprocessCache, file_digest
from cascadeseg.data.layouts import CaseRef, discover_cases, read_case
from cascadeseg.data.preprocess import PreprocessConfig, preprocess_case, restore_to_source
from cascadeseg.data.writers import write_case
from cascadeseg.errors import InputError
from toy import make_tiny_case, write_tiny_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> list[CaseRef]:
    return discover_cases(write_tiny_dataset(tmp_path / "data"))


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the case id of every preprocessing the cache runs."""
    calls: list[str] = []

    def counting(case, cfg=None):
        calls.append(case.case_id)
        return preprocess_case(case, cfg)

    monkeypatch.setattr(cache_module, "preprocess_case", counting)
    return calls


@pytest.fixture
def cache(tmp_path: Path) -> PreprocessCache:
    """An empty cache of the default settings in ``tmp_path / "cache"``."""
    return PreprocessCache(tmp_path / "cache")


def assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.brain_mask, b.brain_mask)
    assert a.spacing == b.spacing and a.geometry == b.geometry and a.case_id == b.case_id


def test_hit_returns_identical_memory_mapped_arrays(
    tmp_path: Path, cache: PreprocessCache, dataset: list[CaseRef], builds: list[str]
) -> None:
    ref = dataset[0]
    first = cache.get(ref)
    second = cache.get(ref)
    assert builds == [ref.case_id]  # the second get did not preprocess again
    fresh = preprocess_case(read_case(ref))
    assert_same(first, fresh)
    assert_same(second, fresh)
    assert isinstance(second.image, np.memmap) and not second.image.flags.writeable
    assert cache.contains(ref)
    # a new cache object on the same folder (another process) hits too, also without the memo
    assert_same(PreprocessCache(tmp_path / "cache", trust_stat=False).get(ref), fresh)
    assert builds == [ref.case_id]
    # geometry from the cache restores the source labels exactly
    np.testing.assert_array_equal(
        restore_to_source(np.asarray(second.label), second, order=0), read_case(ref).label
    )
    # no temporary folders are left behind
    assert not [p for p in cache.folder.iterdir() if p.name.startswith(".")]


def test_changed_file_makes_the_entry_stale(
    cache: PreprocessCache, dataset: list[CaseRef], builds: list[str]
) -> None:
    ref = dataset[0]
    before = cache.get(ref)
    case = read_case(ref)
    assert case.label is not None
    new_label = case.label.copy()
    new_label[new_label == 3] = 1  # ET becomes NCR in the file
    write_case(case.with_label(new_label), ref.files["seg"].parent.parent, "brats2021")
    after = cache.get(ref)
    assert builds == [ref.case_id, ref.case_id]
    assert (np.asarray(before.label) == 3).any() and not (np.asarray(after.label) == 3).any()


def test_other_settings_use_other_entries(
    tmp_path: Path, dataset: list[CaseRef], builds: list[str]
) -> None:
    a = PreprocessCache(tmp_path / "cache", PreprocessConfig(crop_margin=1))
    b = PreprocessCache(tmp_path / "cache", PreprocessConfig(crop_margin=2))
    assert a.folder != b.folder
    a.get(dataset[0])
    b.get(dataset[0])
    a.get(dataset[0])
    assert len(builds) == 2


@pytest.mark.parametrize(
    "damage",
    [
        "truncate_image",
        "delete_label",
        "garbage_meta",
        "delete_meta",
        "wrong_shape_meta",
        "wrong_key",
    ],
)
def test_corrupt_entry_is_rebuilt(
    cache: PreprocessCache, dataset: list[CaseRef], builds: list[str], damage: str
) -> None:
    ref = dataset[0]
    good = preprocess_case(read_case(ref))
    cache.get(ref)
    entry = cache.entry_dir(ref)
    meta_file = entry / "meta.json"
    if damage == "truncate_image":
        data = (entry / "image.npy").read_bytes()
        (entry / "image.npy").write_bytes(data[: len(data) // 2])
    elif damage == "delete_label":
        (entry / "label.npy").unlink()
    elif damage == "garbage_meta":
        meta_file.write_text("{not json")
    elif damage == "delete_meta":
        meta_file.unlink()
    else:
        meta = json.loads(meta_file.read_text())
        if damage == "wrong_shape_meta":
            meta["arrays"]["image"]["shape"][1] += 1
        else:
            meta["key"] = "0" * 40
        meta_file.write_text(json.dumps(meta))
    assert not cache.contains(ref)
    rebuilt = cache.get(ref)
    assert builds == [ref.case_id, ref.case_id]
    assert_same(rebuilt, good)
    assert cache.contains(ref)


def test_in_memory_cases(cache: PreprocessCache, builds: list[str]) -> None:
    case = make_tiny_case(seed=3)
    first = cache.get_case(case)
    second = cache.get_case(case)
    assert builds == ["toy_000"]
    assert_same(first, second)
    other = make_tiny_case(seed=4)  # same id, other content: stale
    assert not np.array_equal(cache.get_case(other).image, first.image)
    assert builds == ["toy_000", "toy_000"]


def test_warm_builds_reuses_and_reports_failures(
    cache: PreprocessCache, dataset: list[CaseRef]
) -> None:
    broken = CaseRef(
        case_id="broken",
        files={**dataset[0].files, "t1": dataset[0].files["t1"].with_name("missing.nii.gz")},
        layout="brats2021",
        label_convention="brats2021",
    )
    result = cache.warm([*dataset, broken], workers=2, progress=False)
    assert sorted(result.built) == [r.case_id for r in dataset]
    assert list(result.failed) == ["broken"] and "missing.nii.gz" in result.failed["broken"]
    again = cache.warm(dataset, workers=1, progress=False)
    assert again.built == [] and sorted(again.reused) == [r.case_id for r in dataset]
    with pytest.raises(InputError):
        cache.get(broken)


def test_file_digest_memo_follows_changes(tmp_path: Path, cache: PreprocessCache) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    first = cache._file_digest(path)
    assert first == file_digest(path)
    path.write_bytes(b"abcd")  # new size: the memo does not apply
    assert cache._file_digest(path) == file_digest(path) != first


def test_soft_region_fractions_round_trip(tmp_path: Path, dataset: list[CaseRef]) -> None:
    cfg = PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), label_resampling="soft")
    cache = PreprocessCache(tmp_path / "soft", cfg)
    stored = cache.get(dataset[0])
    fresh = preprocess_case(read_case(dataset[0]), cfg)
    assert stored.region_fractions is not None and fresh.region_fractions is not None
    np.testing.assert_array_equal(stored.region_fractions, fresh.region_fractions)
    again = PreprocessCache(tmp_path / "soft", cfg).get(dataset[0])
    np.testing.assert_array_equal(again.region_fractions, fresh.region_fractions)
    assert PreprocessCache(tmp_path / "hard").get(dataset[0]).region_fractions is None
