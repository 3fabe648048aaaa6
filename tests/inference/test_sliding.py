"""Padding and the Gaussian sliding window."""

from __future__ import annotations

import torch

from cascadeseg.inference.sliding import (
    crop_padding,
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
