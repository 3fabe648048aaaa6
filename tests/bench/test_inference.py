"""Whole-case prediction timings (``cascadeseg.bench.inference``)."""

from __future__ import annotations

from cascadeseg.bench.inference import benchmark_inference
from cascadeseg.data.case import Case


def test_benchmark_inference_reports_numbers(tiny_case: Case) -> None:
    tiny = {"base_width": 4, "depth": 1, "norm_groups": 2}
    result = benchmark_inference(
        "unet3d",
        (16, 16, 16),
        "fp32",
        False,
        "cpu",
        model_args=tiny,
        repeats=1,
        warmup=0,
        matmul_size=128,
    )
    assert result["passes"] == 1 and result["size"] == [16, 16, 16]
    assert result["seconds_median"] > 0 and result["gflop_per_case"] > 0
    assert result["matmul_peak_gflops"] > 0
    with_case = benchmark_inference(
        "unet3d", case=tiny_case, model_args=tiny, repeats=1, warmup=0, matmul_size=128
    )
    assert with_case["size"] == [32, 32, 24] and not with_case["data_loading_included"]
