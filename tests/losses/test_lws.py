"""Loss weighted sampling (CU-Net Eqs. 1-3): regions, contour band, sampling proportions, Eq. 1."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from cascadeseg.losses.lws import (
    S1_BACKGROUND,
    S2_BRAIN,
    S3_TUMOUR,
    S4_CONTOUR,
    contour_band,
    dilate,
    erode,
    lws_probabilities,
    lws_regions,
    lws_weights,
    region_counts,
    sample_weights,
    weighted_cross_entropy,
)

# --------------------------------------------------------------------------------------------
# morphology


def test_dilate_single_pixel_is_a_disk() -> None:
    mask = torch.zeros(1, 7, 7, dtype=torch.bool)
    mask[0, 3, 3] = True
    # Radius 1: the 4-neighbour cross (5 pixels); radius 2: dy^2 + dx^2 <= 4 (13 pixels).
    assert dilate(mask, 1).sum().item() == 5
    assert dilate(mask, 2).sum().item() == 13
    assert dilate(mask, 2)[0, 3, 1] and not dilate(mask, 2)[0, 1, 1]


@pytest.mark.parametrize("radius", [1, 3, 5, 8])
def test_dilate_and_erode_match_scipy(radius: int) -> None:
    generator = torch.Generator().manual_seed(radius)
    mask = torch.rand(2, 40, 36, generator=generator) > 0.93
    mask = dilate(mask, 2)  # blobs, so that erosion leaves something
    offsets = np.arange(-radius, radius + 1)
    disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2
    for b in range(2):
        expected = ndimage.binary_dilation(mask[b].numpy(), structure=disk)
        np.testing.assert_array_equal(dilate(mask, radius)[b].numpy(), expected)
        # Our erosion treats the image border as inside the mask (border_value=1).
        expected_erosion = ndimage.binary_erosion(mask[b].numpy(), structure=disk, border_value=1)
        np.testing.assert_array_equal(erode(mask, radius)[b].numpy(), expected_erosion)


@pytest.mark.parametrize(("width", "first", "last"), [(10, 27, 36), (7, 28, 34), (1, 31, 31)])
def test_contour_band_width_on_a_straight_edge(width: int, first: int, last: int) -> None:
    # Tumour = columns 0..31 of a 64x64 slice: the band holds width // 2 columns outside
    # (32..) and width - width // 2 inside (..31), i.e. exactly `width` columns.
    tumour = torch.zeros(1, 64, 64, dtype=torch.bool)
    tumour[0, :, :32] = True
    band = contour_band(tumour, width)
    columns = torch.nonzero(band[0].any(dim=0)).flatten()
    assert columns.tolist() == list(range(first, last + 1))
    assert band[0].sum(dim=1).tolist() == [width] * 64


def test_contour_band_of_a_disk_is_about_width_wide() -> None:
    size, radius, width = 128, 30, 10
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dist = ((yy - 64.0) ** 2 + (xx - 64.0) ** 2).sqrt()
    band = contour_band((dist <= radius)[None], width)[0]
    # Annulus between radii 25 and 35: area pi * (35^2 - 25^2) = 1885 pixels.
    expected = math.pi * ((radius + width / 2) ** 2 - (radius - width / 2) ** 2)
    assert band.sum().item() == pytest.approx(expected, rel=0.03)
    # Along a ray from the centre the band spans `width` pixels.
    assert band[64].sum().item() == 2 * width


# --------------------------------------------------------------------------------------------
# regions


def test_lws_regions_hand_computed() -> None:
    # 5x5 slice, column 0 outside the brain, tumour = the centre 3x3 block, contour width 2
    # (1 pixel outside via a radius-1 cross, 1 pixel inside). The band is the 3x3 ring minus its
    # centre plus the cross-neighbours of the block; the left neighbours are non-brain (S1).
    label = torch.zeros(5, 5, dtype=torch.int64)
    label[1:4, 1:4] = 2
    label[2, 2] = 3
    brain = torch.ones(5, 5, dtype=torch.bool)
    brain[:, 0] = False
    expected = torch.tensor(
        [
            [1, 4, 4, 4, 2],
            [1, 4, 4, 4, 4],
            [1, 4, 3, 4, 4],
            [1, 4, 4, 4, 4],
            [1, 4, 4, 4, 2],
        ],
        dtype=torch.uint8,
    )
    regions = lws_regions(label, brain, contour_width=2)
    assert regions.shape == (5, 5)
    assert torch.equal(regions, expected)
    assert region_counts(regions).tolist() == [5, 2, 1, 17]
    # Without a contour: S3 = the 9 tumour pixels, S2 = the other 11 brain pixels.
    no_band = lws_regions(label[None], brain[None], contour_width=0)
    assert region_counts(no_band).tolist() == [[5, 11, 9, 0]]


def test_tumour_outside_brain_mask_still_counts_as_tumour() -> None:
    label = torch.zeros(1, 4, 4, dtype=torch.int64)
    label[0, 0, 0] = 1
    brain = torch.zeros(1, 4, 4, dtype=torch.bool)
    regions = lws_regions(label, brain, contour_width=0)
    assert regions[0, 0, 0].item() == S3_TUMOUR
    assert (regions == S1_BACKGROUND).sum().item() == 15


# --------------------------------------------------------------------------------------------
# probabilities


def test_lws_probabilities() -> None:
    # U-Net 1: p2 = beta * p3 * N_S3 / N_S2 = 1.5 * 50 / 400 = 0.1875 (Eq. 3).
    assert lws_probabilities([100, 400, 50, 20], net=1, beta=1.5) == pytest.approx(
        (0.0, 0.1875, 1.0, 1.0)
    )
    # Clipped to 1 when the tumour outnumbers the brain: 1.5 * 50 / 10 = 7.5.
    assert lws_probabilities([0, 10, 50, 0], net=1, beta=1.5)[1] == 1.0
    # No normal brain: nothing to sample.
    assert lws_probabilities([10, 0, 50, 5], net=1, beta=1.5)[1] == 0.0
    # U-Net 2: tumour and contour only.
    assert lws_probabilities([100, 400, 50, 20], net=2, beta=1.5) == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="net"):
        lws_probabilities([1, 1, 1, 1], net=3, beta=1.5)


# --------------------------------------------------------------------------------------------
# sampling


def _synthetic_batch(batch: int = 2, size: int = 160) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32),
        torch.arange(size, dtype=torch.float32),
        indexing="ij",
    )
    centre = size / 2
    brain = ((yy - centre) / (0.42 * size)) ** 2 + ((xx - centre) / (0.35 * size)) ** 2 <= 1
    labels = torch.zeros(batch, size, size, dtype=torch.int64)
    for b in range(batch):
        dist = ((yy - centre - 6 * b) ** 2 + (xx - centre) ** 2).sqrt()
        labels[b][dist <= 22 + 4 * b] = 2
        labels[b][dist <= 12] = 1
        labels[b][(dist > 12) & (dist <= 15)] = 3
    return labels, brain.expand(batch, size, size).clone()


def test_unet1_sampling_proportions() -> None:
    labels, brain = _synthetic_batch()
    regions = lws_regions(labels, brain, contour_width=10)
    _, n_s2, n_s3, n_s4 = region_counts(regions).sum(dim=0).tolist()
    assert n_s2 > 5 * n_s3 > 0 and n_s4 > 0
    alpha, beta = 2.0, 1.5
    generator = torch.Generator().manual_seed(0)
    sampled_s2 = []
    for _ in range(10):
        weights = lws_weights(
            labels, brain, net=1, alpha=alpha, beta=beta, contour_width=10, generator=generator
        )
        assert weights.shape == labels.shape and weights.dtype == torch.float32
        # S1 is never sampled; S3 always with weight 1; S4 always with weight alpha only
        # (the regions partition the slice, so no contour pixel gets 1 + alpha).
        assert (weights[regions == S1_BACKGROUND] == 0).all()
        assert (weights[regions == S3_TUMOUR] == 1).all()
        assert (weights[regions == S4_CONTOUR] == alpha).all()
        s2 = weights[regions == S2_BRAIN]
        assert set(s2.unique().tolist()) <= {0.0, 1.0}
        sampled_s2.append(s2.sum().item())
    # Eq. 3: p2 * N_S2 = beta * N_S3, so beta * N_S3 brain pixels are drawn per call on average
    # (one draw's binomial spread is about 1.5%; the mean of 10 draws about 0.5%).
    mean_sampled = sum(sampled_s2) / len(sampled_s2)
    assert mean_sampled == pytest.approx(beta * n_s3, rel=0.02)
    assert abs(sampled_s2[0] - beta * n_s3) / (beta * n_s3) < 0.1


def test_per_sample_counts() -> None:
    labels, brain = _synthetic_batch()
    regions = lws_regions(labels, brain, contour_width=10)
    counts = region_counts(regions)
    generator = torch.Generator().manual_seed(1)
    totals = torch.zeros(2)
    for _ in range(20):
        weights = sample_weights(
            regions, net=1, alpha=2.0, beta=1.5, generator=generator, per_sample=True
        )
        totals += ((weights == 1) & (regions == S2_BRAIN)).sum(dim=(1, 2)).float()
    expected = 1.5 * counts[:, 2].float()
    assert torch.allclose(totals / 20, expected, rtol=0.03)


def test_batch_counts_sample_tumour_free_slices() -> None:
    labels, brain = _synthetic_batch()
    labels[1] = 0  # the second slice has no tumour
    generator = torch.Generator().manual_seed(2)
    pooled = lws_weights(
        labels, brain, net=1, alpha=2.0, beta=1.5, contour_width=10, generator=generator
    )
    per_slice = lws_weights(
        labels,
        brain,
        net=1,
        alpha=2.0,
        beta=1.5,
        contour_width=10,
        generator=generator,
        per_sample=True,
    )
    assert pooled[1].sum() > 0  # batch counts: p2 from the whole batch
    assert per_slice[1].sum() == 0  # per slice: N_S3 = 0 gives p2 = 0


def test_unet2_samples_only_tumour_and_contour() -> None:
    labels, brain = _synthetic_batch()
    regions = lws_regions(labels, brain, contour_width=10)
    weights = lws_weights(
        labels,
        brain,
        net=2,
        alpha=1.0,
        beta=1.5,
        contour_width=10,
        generator=torch.Generator().manual_seed(0),
    )
    expected = ((regions == S3_TUMOUR) | (regions == S4_CONTOUR)).float()
    assert torch.equal(weights, expected)


def test_resampled_every_call_and_reproducible() -> None:
    labels, brain = _synthetic_batch(batch=1, size=96)
    kwargs: dict[str, Any] = {"net": 1, "alpha": 2.0, "beta": 1.5, "contour_width": 10}
    generator = torch.Generator().manual_seed(5)
    first = lws_weights(labels, brain, generator=generator, **kwargs)
    second = lws_weights(labels, brain, generator=generator, **kwargs)
    again = lws_weights(labels, brain, generator=torch.Generator().manual_seed(5), **kwargs)
    assert not torch.equal(first, second)
    assert torch.equal(first, again)
    torch.manual_seed(0)
    assert lws_weights(labels, brain, **kwargs).shape == labels.shape  # global generator


# --------------------------------------------------------------------------------------------
# Eq. 1


def test_weighted_cross_entropy_hand_computed() -> None:
    # Pixel a: logits (0, 0), target 0 -> CE = ln 2. Pixel b: logits (ln 3, 0), target 1 ->
    # p1 = 1 / (3 + 1), CE = ln 4. Weights (1, 2): (ln 2 + 2 ln 4) / 3 = 5 ln 2 / 3.
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    weights = torch.tensor([[[1.0, 2.0]]])
    loss = weighted_cross_entropy(logits, target, weights)
    assert loss.item() == pytest.approx(5 * math.log(2) / 3, rel=1e-6)
    # Zero weight on pixel b: ln 2 alone (normalised by sum(W) = 1).
    zero_b = torch.tensor([[[1.0, 0.0]]])
    assert weighted_cross_entropy(logits, target, zero_b).item() == pytest.approx(math.log(2))


def test_weighted_cross_entropy_uniform_weights_is_plain_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=generator)
    target = torch.randint(0, 4, (2, 5, 6), generator=generator)
    expected = torch.nn.functional.cross_entropy(logits, target)
    loss = weighted_cross_entropy(logits, target, torch.full((2, 5, 6), 3.0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_weighted_cross_entropy_zero_weights_guard() -> None:
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = weighted_cross_entropy(
        logits, torch.zeros(1, 3, 3, dtype=torch.int64), torch.zeros(1, 3, 3)
    )
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_weighted_cross_entropy_float32_under_autocast() -> None:
    logits = torch.randn(1, 2, 3, 3).to(torch.bfloat16)
    target = torch.ones(1, 3, 3, dtype=torch.int64)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = weighted_cross_entropy(logits, target, torch.ones(1, 3, 3))
    assert loss.dtype == torch.float32


def test_single_slice_input() -> None:
    labels, brain = _synthetic_batch(batch=1, size=64)
    weights = lws_weights(
        labels[0],
        brain[0],
        net=2,
        alpha=1.0,
        beta=1.5,
        contour_width=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert weights.shape == (64, 64)
    assert torch.equal(weights > 0, lws_regions(labels[0], brain[0], 4) >= S3_TUMOUR)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    labels, brain = _synthetic_batch(batch=2, size=96)
    cpu_regions = lws_regions(labels, brain, 10)
    gpu_regions = lws_regions(labels.cuda(), brain.cuda(), 10)
    assert torch.equal(gpu_regions.cpu(), cpu_regions)
    # A CPU generator with CUDA tensors draws on the CPU: the same weights as on the CPU.
    kwargs: dict[str, Any] = {"net": 1, "alpha": 2.0, "beta": 1.5, "contour_width": 10}
    cpu = lws_weights(labels, brain, generator=torch.Generator().manual_seed(0), **kwargs)
    gpu = lws_weights(
        labels.cuda(), brain.cuda(), generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
    assert lws_weights(labels.cuda(), brain.cuda(), **kwargs).device.type == "cuda"
