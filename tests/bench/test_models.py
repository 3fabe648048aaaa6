"""Network forward timings and fp32-vs-lower-precision agreement (``cascadeseg.bench.models``)."""

from __future__ import annotations

import pytest
import torch

from cascadeseg.bench.models import benchmark_forward, precision_agreement
from cascadeseg.errors import ModelError
from cascadeseg.models import build_model
from cascadeseg.models.inspect import build_meta_model, count_flops


def test_benchmark_forward_tiny() -> None:
    result = benchmark_forward(
        "unet3d", (8, 8, 8), "fp32", repeats=2, overrides={"base_width": 8, "depth": 2}
    )
    assert result["flops"] == count_flops(
        build_meta_model("unet3d", base_width=8, depth=2), (8, 8, 8)
    )
    assert len(result["seconds_all"]) == 2 and result["seconds"] > 0
    assert result["gflops_per_s"] == pytest.approx(result["flops"] / result["seconds"] / 1e9)
    with pytest.raises(ModelError, match="2D"):
        benchmark_forward("unet2d", (8, 8, 8), overrides={"base_width": 4})


def test_precision_agreement() -> None:
    torch.manual_seed(0)
    model = build_model("unet2d", base_width=4)
    image = torch.randn(1, 4, 16, 16)
    same = precision_agreement(model, image, "fp32")
    assert same == {"WT": 1.0, "TC": 1.0, "ET": 1.0, "mean": 1.0}
    bf16 = precision_agreement(model, image, "bf16", channels_last=True)
    assert 0.0 <= bf16["mean"] <= 1.0
    with pytest.raises(ModelError, match="precision"):
        precision_agreement(model, image, "fp8")
