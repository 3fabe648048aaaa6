"""Padding, the Gaussian sliding window and the automatic whole-volume fallback."""

from __future__ import annotations

import pytest
import torch

from cascadeseg.inference.sliding import (
    AdaptiveForward,
    crop_padding,
    is_out_of_memory,
    pad_amounts,
    pad_to_multiple,
    sliding_window,
    window_size,
)


def _pointwise() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(4, 3, kernel_size=1), torch.nn.Sigmoid()).eval()


def test_pad_amounts_centre_the_volume() -> None:
    assert pad_amounts((155,), 8) == ((2, 3),)
    assert pad_amounts((240, 240, 155), 16) == ((0, 0), (0, 0), (2, 3))
    assert pad_amounts((5, 7), (4, 1)) == ((1, 2), (0, 0))


def test_pad_and_crop_round_trip() -> None:
    x = torch.arange(2 * 5 * 6 * 7, dtype=torch.float32).reshape(1, 2, 5, 6, 7)
    padded, pads = pad_to_multiple(x, 4)
    assert padded.shape == (1, 2, 8, 8, 8)
    assert pads == ((1, 2), (1, 1), (0, 1))
    assert float(padded[0, 0, 0].abs().sum()) == 0.0  # padding is zeros
    assert torch.equal(crop_padding(padded, pads), x)


def test_window_size_capped_and_rounded() -> None:
    assert window_size((128, 128, 128), (96, 160, 64), 8) == (96, 128, 64)
    assert window_size((20, 20), (64, 64), 8) == (16, 16)


def test_sliding_window_equals_whole_for_small_receptive_field() -> None:
    net = _pointwise()
    x = torch.randn(1, 4, 32, 24, 16)
    with torch.no_grad():
        whole = net(x)
        slid = sliding_window(net, x, roi_size=(16, 16, 16), overlap=0.5, multiple=8)
    assert slid.shape == whole.shape
    assert float((slid - whole).abs().max()) < 1e-5


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
