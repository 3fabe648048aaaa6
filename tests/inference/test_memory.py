"""The memory policy: the automatic whole-volume fallback to the sliding window."""

from __future__ import annotations

import pytest
import torch
from test_sliding import _pointwise

from cascadeseg.inference.memory import AdaptiveForward, is_out_of_memory


class _FailsAbove:
    """A model that raises an out-of-memory error on inputs above ``limit`` voxels."""

    def __init__(self, limit: int, error: type[BaseException]) -> None:
        self.net = _pointwise()
        self.limit = limit
        self.error = error
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape[2:]))
        if x[0, 0].numel() > self.limit:
            if self.error is RuntimeError:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ...")
            raise self.error("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.net(x)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, MemoryError, RuntimeError])
def test_out_of_memory_falls_back_to_sliding_window(error: type[BaseException]) -> None:
    model = _FailsAbove(16**3, error)
    forward = AdaptiveForward(model, policy="auto", roi_size=(16, 16, 16), multiple=8)
    x = torch.randn(1, 4, 32, 32, 16)
    with torch.no_grad():
        out = forward(x)
        again = forward(x)  # the decision sticks: no second whole-volume attempt
    assert forward.mode == "sliding"
    assert forward.fallbacks == ["whole volume out of memory: sliding window"]
    assert model.calls.count((32, 32, 16)) == 1
    with torch.no_grad():
        assert float((out - model.net(x)).abs().max()) < 1e-5
    assert torch.equal(out, again)


def test_sliding_window_shrinks_on_out_of_memory() -> None:
    model = _FailsAbove(8 * 8 * 16, torch.cuda.OutOfMemoryError)
    forward = AdaptiveForward(model, policy="always", roi_size=(16, 16, 16), multiple=8)
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        out = forward(x)
        assert float((out - model.net(x)).abs().max()) < 1e-5
    assert forward.roi_size == (8, 8, 16)
    assert len(forward.fallbacks) == 2


def test_policy_never_propagates_and_estimate_skips_whole_pass() -> None:
    model = _FailsAbove(16**3, torch.cuda.OutOfMemoryError)
    x = torch.randn(1, 4, 32, 16, 16)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        AdaptiveForward(model, policy="never", roi_size=(16,) * 3, multiple=8)(x)
    model.calls.clear()
    forward = AdaptiveForward(
        model,
        policy="auto",
        roi_size=(16,) * 3,
        multiple=8,
        budget_bytes=1000.0,
        estimate_bytes=lambda shape: 1e6,
    )
    with torch.no_grad():
        forward(x)
    assert (32, 16, 16) not in model.calls  # went straight to windows
    assert "budget" in forward.fallbacks[0]


def test_is_out_of_memory() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
