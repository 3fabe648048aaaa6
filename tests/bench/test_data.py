"""The data suite's measuring functions (``cascadeseg.bench.data``): they return timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascadeseg.bench.data import benchmark_lws, benchmark_preprocess
from cascadeseg.data.layouts import CaseRef, discover_cases
from toy import make_tiny_case, write_tiny_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> list[CaseRef]:
    return discover_cases(write_tiny_dataset(tmp_path / "data"))


def test_benchmark_on_files(dataset: list[CaseRef]) -> None:
    result = benchmark_preprocess(dataset[0], repeats=1)
    assert result["read_s"] > 0.0 and result["cache_write_s"] > result["cache_load_s"] > 0.0
    assert result["read_preprocess_s"] == result["read_s"] + result["preprocess_s"]


def test_benchmark_preprocess_returns_timings() -> None:
    result = benchmark_preprocess(make_tiny_case((20, 20, 16)), repeats=1)
    assert set(result) == {
        "read_s", "preprocess_s", "read_preprocess_s", "cache_write_s", "cache_load_s",
        "shape_x", "shape_y", "shape_z",
    }  # fmt: skip
    assert result["read_s"] == 0.0 and result["preprocess_s"] > 0.0 and result["cache_load_s"] > 0
    assert (result["shape_x"], result["shape_y"], result["shape_z"]) == (20.0, 20.0, 16.0)


def test_benchmark_lws_returns_timings() -> None:
    result = benchmark_lws(batch=2, size=48, repeats=1, warmup=0)
    assert result["batch"] == 2 and result["size"] == 48
    assert result["regions_s"] > 0 and result["weights_s"] > 0
