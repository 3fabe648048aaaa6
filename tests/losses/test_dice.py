"""Region soft Dice (two-stage paper Eq. 2): hand-computed values on 2x2x2 volumes."""

from __future__ import annotations

import pytest
import torch

from cascadeseg.losses.dice import region_dice_loss, soft_dice_per_region


def _volume(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(2, 2, 2)


def test_soft_dice_per_region_hand_computed() -> None:
    # WT: S = [1, .5, 0...], R = [1, 1, 0...]: sum SR = 1.5, sum S^2 = 1.25, sum R^2 = 2
    #     -> 2 * 1.5 / (3.25 + eps) = 0.923077
    # TC: S = .5 everywhere, R = [1, 0...]: sum SR = .5, sum S^2 = 8 * .25 = 2, sum R^2 = 1
    #     -> 1 / (3 + eps) = 1/3
    # ET: S = 0, R = 0 -> 0 / eps = 0 (Eq. 2 has no numerator smoothing)
    probs = torch.stack(
        [_volume([1, 0.5, 0, 0, 0, 0, 0, 0]), _volume([0.5] * 8), _volume([0] * 8)]
    )[None]
    target = torch.stack(
        [_volume([1, 1, 0, 0, 0, 0, 0, 0]), _volume([1, 0, 0, 0, 0, 0, 0, 0]), _volume([0] * 8)]
    )[None]
    dice = soft_dice_per_region(probs, target, eps=1e-5)
    assert dice.shape == (1, 3)
    assert dice[0].tolist() == pytest.approx([3 / 3.25, 1 / 3, 0.0], rel=1e-5)


def _two_stage_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits 0 (S = 0.5) against WT = 4 voxels, TC = 2, ET = 1 of a 2x2x2 volume."""
    target = torch.stack(
        [
            _volume([1, 1, 1, 1, 0, 0, 0, 0]),
            _volume([1, 1, 0, 0, 0, 0, 0, 0]),
            _volume([1, 0, 0, 0, 0, 0, 0, 0]),
        ]
    )[None]
    return torch.zeros_like(target), target


def test_region_dice_loss_hand_computed() -> None:
    # S = 0.5 everywhere, sum S^2 = 2:
    # WT: 2 * .5 * 4 / (2 + 4) = 2/3; TC: 2 * .5 * 2 / (2 + 2) = 1/2; ET: 2 * .5 / (2 + 1) = 1/3
    # loss = (1 - 2/3) + (1 - 1/2) + (1 - 1/3) = 1.5
    logits, target = _two_stage_example()
    loss = region_dice_loss(logits, target)
    assert loss.item() == pytest.approx(1.5, rel=1e-5)


def test_region_weights_multiply_each_regions_term() -> None:
    # The hand example's terms WT 1/3, TC 1/2, ET 2/3; TC twice and ET not at all:
    # 1/3 + 2 * 1/2 + 0 * 2/3 = 4/3. All ones is the plain sum (1.5).
    logits, target = _two_stage_example()
    weighted = region_dice_loss(logits, target, region_weights=(1.0, 2.0, 0.0))
    assert weighted.item() == pytest.approx(4 / 3, rel=1e-5)
    ones = region_dice_loss(logits, target, region_weights=(1.0, 1.0, 1.0))
    assert ones.item() == pytest.approx(region_dice_loss(logits, target).item(), rel=1e-6)
    with pytest.raises(ValueError, match="2 region weights for 3 regions"):
        region_dice_loss(logits, target, region_weights=(1.0, 2.0))


def test_mean_over_batch_and_batch_dice() -> None:
    logits, target = _two_stage_example()
    perfect = 30.0 * (2 * target - 1)
    logits2 = torch.cat([logits, perfect])
    target2 = torch.cat([target, target])
    # Per sample: (1.5 + 0) / 2.
    assert region_dice_loss(logits2, target2).item() == pytest.approx(0.75, rel=1e-5)
    # Pooled over the batch: WT 2 * (2 + 4) / ((2 + 4) + 8) = 6/7; TC 2 * (1 + 2) / ((2 + 2) + 4)
    # = 3/4; ET 2 * (.5 + 1) / ((2 + 1) + 2) = 3/5 -> loss = 1/7 + 1/4 + 2/5.
    pooled = region_dice_loss(logits2, target2, batch_dice=True).item()
    assert pooled == pytest.approx(1 / 7 + 1 / 4 + 2 / 5, rel=1e-5)


def test_perfect_prediction_is_zero_and_empty_region_costs_one() -> None:
    _, target = _two_stage_example()
    perfect = 20.0 * (2 * target - 1)
    # Only eps remains: ET = 1 voxel gives 1 - 2 / (2 + 1e-5) = 5e-6; all three about 9e-6.
    assert region_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=2e-5)
    # ET absent from the ground truth: Eq. 2 gives Dice 0 whatever the prediction.
    target_no_et = target.clone()
    target_no_et[:, 2] = 0
    perfect_no_et = 20.0 * (2 * target_no_et - 1)
    assert region_dice_loss(perfect_no_et, target_no_et).item() == pytest.approx(1.0, abs=2e-5)
    # MONAI-style numerator smoothing makes an empty region predicted empty score Dice 1.
    smoothed = region_dice_loss(perfect_no_et, target_no_et, smooth_nr=1e-5)
    assert smoothed.item() == pytest.approx(0.0, abs=1e-4)


def test_matches_monai_dice_loss() -> None:
    monai_losses = pytest.importorskip("monai.losses")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, 4, generator=generator)
    target = (torch.rand(2, 3, 6, 5, 4, generator=generator) > 0.6).float()
    reference = monai_losses.DiceLoss(
        sigmoid=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-5, reduction="none"
    )(logits, target)
    expected = reference.reshape(2, 3).sum(dim=1).mean()
    assert region_dice_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_flows() -> None:
    logits, target = _two_stage_example()
    logits = logits.clone().requires_grad_(True)
    region_dice_loss(logits, target).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    # Raising a logit inside a region lowers the loss: the gradient there is negative.
    assert logits.grad[0, 0, 0, 0, 0] < 0
    # Outside every region the gradient pushes the logits down (positive).
    assert logits.grad[0, 0, 1, 1, 1] > 0


def test_float32_under_autocast() -> None:
    logits, target = _two_stage_example()
    logits_bf16 = logits.to(torch.bfloat16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = region_dice_loss(logits_bf16, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1.5, rel=1e-5)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ"):
        soft_dice_per_region(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3))


def test_per_crop_dice_weighs_a_missed_small_lesion_like_a_large_one() -> None:
    """Why the CPU recipe averages the Dice per crop (``loss.dice_batch: false``): a batch of a
    crop with a large lesion found and a crop whose small lesion is missed costs half the loss
    per crop, but almost nothing pooled over the batch, where the large lesion's voxels swamp
    the small one's."""
    target = torch.zeros(2, 1, 8, 8, 8)
    target[0, 0, :6, :6, :6] = 1  # 216 voxels, predicted exactly
    target[1, 0, :2, :1, :1] = 1  # 2 voxels, missed
    logits = 30.0 * (2 * target - 1)
    logits[1] = -30.0
    opts = {"eps": 1.0, "smooth_nr": 1.0}
    per_crop = region_dice_loss(logits, target, **opts).item()
    pooled = region_dice_loss(logits, target, batch_dice=True, **opts).item()
    # Per crop: (0 + (1 - 1 / 3)) / 2 = 1/3; pooled: 1 - (2 * 216 + 1) / (218 + 216 + 1).
    assert per_crop == pytest.approx(1 / 3, abs=1e-3)
    assert pooled == pytest.approx(1 - 433 / 435, abs=1e-3)
    assert per_crop > 50 * pooled
