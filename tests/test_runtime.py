"""Device and precision resolution."""

from __future__ import annotations

import pytest
import torch

from cascadeseg import runtime
from cascadeseg.errors import ConfigError


def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_bf16_is_fast", lambda: False)
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(runtime, "cpu_bf16_is_fast", lambda: True)
    assert runtime.resolve_precision("auto", "cpu") == "bf16"


def test_explicit_precisions() -> None:
    assert runtime.resolve_precision("bf16", "cpu") == "bf16"
    assert runtime.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        runtime.resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="choose one of"):
        runtime.resolve_precision("fp8", "cpu")


def test_autocast_contexts() -> None:
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with runtime.autocast("fp32", "cpu"):
        assert layer(x).dtype == torch.float32
    with runtime.autocast("bf16", "cpu"):
        assert layer(x).dtype == torch.bfloat16


def test_resolve_device() -> None:
    assert runtime.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert runtime.resolve_device("auto").type == "cpu"
        with pytest.raises(ConfigError):
            runtime.resolve_device("cuda")
