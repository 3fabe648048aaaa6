"""Flip test-time augmentation (two-stage paper, sec. 3.3)."""

from __future__ import annotations

import pytest
import torch

from cascadeseg.inference.tta import flip_combinations, flip_tta, flip_tta_moments


def test_flip_combinations_counts_and_identity_first() -> None:
    assert flip_combinations(3) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert flip_combinations(2) == [(), (2,), (3,), (2, 3)]


def test_pointwise_model_is_tta_invariant() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(4, 3, kernel_size=1)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(conv(x))

    x = torch.randn(1, 4, 6, 5, 4)
    with torch.no_grad():
        plain = fn(x)
        mean, mean_sq, passes = flip_tta_moments(fn, x, spatial_dims=3)
    assert passes == 8
    assert torch.allclose(mean, plain, atol=1e-6)
    # A flip-equivariant model has no spread over the flips.
    assert float((mean_sq - mean**2).abs().max()) < 1e-6


def test_non_equivariant_model_hand_computed() -> None:
    # fn = cumulative sum along X. On x = [1, 2]: identity -> [1, 3]; flipped, summed, flipped
    # back -> [3, 2]. Flips of the size-1 axes change nothing, so 4 passes of each: mean
    # [2, 2.5].
    x = torch.tensor([1.0, 2.0]).reshape(1, 1, 2, 1, 1)
    out = flip_tta(lambda t: torch.cumsum(t, dim=2), x, spatial_dims=3)
    assert out.flatten().tolist() == [2.0, 2.5]
    _, mean_sq, _ = flip_tta_moments(lambda t: torch.cumsum(t, dim=2), x, spatial_dims=3)
    # second moments: (1 + 9) / 2 = 5 and (9 + 4) / 2 = 6.5
    assert mean_sq.flatten().tolist() == [5.0, 6.5]


def test_2d_uses_four_in_plane_flips() -> None:
    seen: list[torch.Tensor] = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return t

    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    out = flip_tta(fn, x, spatial_dims=2)
    assert len(seen) == 4
    assert torch.equal(seen[1], torch.flip(x, (2,)))
    assert torch.equal(seen[3], torch.flip(x, (2, 3)))
    assert torch.equal(out, x)  # identity model: every flipped output flips back to x


def test_no_tta_is_one_pass() -> None:
    x = torch.rand(1, 2, 4, 4, 4)
    mean, mean_sq, passes = flip_tta_moments(torch.sigmoid, x, spatial_dims=3, tta=False)
    assert passes == 1
    assert torch.equal(mean, torch.sigmoid(x))
    assert torch.allclose(mean_sq, torch.sigmoid(x) ** 2)


def test_flips_per_call_batches_flips_without_changing_the_result() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, kernel_size=3, padding=1)  # not flip-equivariant
    calls: list[int] = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape[0])
        return torch.sigmoid(conv(t))

    x = torch.randn(2, 2, 5, 6, 4)  # a batch of two volumes
    with torch.no_grad():
        ref_mean, ref_sq, _ = flip_tta_moments(fn, x, spatial_dims=3)
        for k, expected_calls in ((2, [4, 4, 4, 4]), (3, [6, 6, 4]), (8, [16])):
            calls.clear()
            mean, mean_sq, passes = flip_tta_moments(fn, x, spatial_dims=3, flips_per_call=k)
            assert passes == 8 and calls == expected_calls
            torch.testing.assert_close(mean, ref_mean)
            torch.testing.assert_close(mean_sq, ref_sq)
    with pytest.raises(ValueError, match="flips_per_call"):
        flip_tta_moments(fn, x, spatial_dims=3, flips_per_call=0)
