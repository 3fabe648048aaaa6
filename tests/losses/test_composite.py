"""Whole-model losses: two-stage sum of Dice losses, CU-Net Eq. 4, label CE, build_loss."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest
import torch

from cascadeseg.config import LossConfig
from cascadeseg.data.labels import label_to_regions
from cascadeseg.errors import ModelError
from cascadeseg.losses import (
    LOSS_FOR_KIND,
    CUNetLoss,
    LabelCELoss,
    RegionDiceLoss,
    TwoStageLoss,
    build_loss,
    region_dice_loss,
    regions_from_label,
    register_loss,
    weighted_cross_entropy,
)
from cascadeseg.models import OUTPUT_KINDS, available_models, network_spec
from cascadeseg.training.schedules import aux_weight_at

LN2 = math.log(2.0)
#: The papers' auxiliary weight schedule (0.1, divided by 10 every 10 epochs, floor 1e-3).
PAPER = LossConfig()


class FakeTwoStageOutput(NamedTuple):
    stage1: torch.Tensor
    stage2: torch.Tensor
    stage2_interp: torch.Tensor | None


class FakeCUNetOutput(NamedTuple):
    branch1: torch.Tensor
    branch2: torch.Tensor
    aux: tuple[torch.Tensor, ...]


def _label_2x2x2() -> torch.Tensor:
    """(1, 2, 2, 2) labels: WT = 4 voxels, TC = 2 (NCR + ET), ET = 1."""
    return torch.tensor([1, 3, 2, 2, 0, 0, 0, 0]).reshape(1, 2, 2, 2)


def test_regions_from_label_matches_labels_module() -> None:
    label = torch.randint(0, 4, (2, 3, 4, 5), generator=torch.Generator().manual_seed(0))
    expected = np.stack([label_to_regions(sample) for sample in label.numpy()])
    assert torch.equal(regions_from_label(label), torch.from_numpy(expected).float())


def test_two_stage_loss_hand_computed() -> None:
    label = _label_2x2x2()
    regions = regions_from_label(label)
    # Stage 1 perfect (about 0); stages 2 and interp with logits 0: 1/3 + 1/2 + 2/3 = 1.5 each
    # (see test_dice.py). Interp weight 0.5: total = 0 + 1.5 + 0.5 * 1.5 = 2.25.
    output = FakeTwoStageOutput(
        stage1=30.0 * (2 * regions - 1),
        stage2=torch.zeros(1, 3, 2, 2, 2),
        stage2_interp=torch.zeros(1, 3, 2, 2, 2),
    )
    total, parts = TwoStageLoss(interp_decoder_weight=0.5)(output, {"regions": regions})
    assert total.item() == pytest.approx(2.25, abs=1e-4)
    assert parts["loss_stage1"] == pytest.approx(0.0, abs=2e-5)
    assert parts["loss_stage2"] == pytest.approx(1.5, rel=1e-5)
    assert parts["loss_stage2_interp"] == pytest.approx(1.5, rel=1e-5)
    total_from_parts = (
        parts["loss_stage1"] + parts["loss_stage2"] + 0.5 * parts["loss_stage2_interp"]
    )
    assert parts["total"] == pytest.approx(total_from_parts, rel=1e-6)
    # The target may come from the label map alone.
    total_from_label, _ = TwoStageLoss(interp_decoder_weight=0.5)(output, {"label": label})
    assert total_from_label.item() == pytest.approx(total.item(), rel=1e-6)


def test_two_stage_loss_plain_output_and_gradients() -> None:
    label = _label_2x2x2()
    logits = torch.zeros(1, 3, 2, 2, 2, requires_grad=True)
    total, parts = TwoStageLoss()(logits, {"label": label})
    assert total.item() == pytest.approx(1.5, rel=1e-5)
    assert set(parts) == {"total"}
    region_only, _ = RegionDiceLoss()(logits, {"label": label})
    assert region_only.item() == pytest.approx(1.5, rel=1e-5)

    stages = [torch.randn(1, 3, 2, 2, 2, requires_grad=True) for _ in range(3)]
    total, _ = TwoStageLoss()(FakeTwoStageOutput(*stages), {"label": label})
    total.backward()
    for stage in stages:
        assert stage.grad is not None and stage.grad.abs().sum() > 0
    # Without the interpolation decoder (eval-mode style) only two terms remain.
    out = FakeTwoStageOutput(stages[0], stages[1], None)
    total2, parts2 = TwoStageLoss()(out, {"label": label})
    assert "loss_stage2_interp" not in parts2
    expected = region_dice_loss(stages[0], regions_from_label(label)) + region_dice_loss(
        stages[1], regions_from_label(label)
    )
    assert total2.item() == pytest.approx(expected.item(), rel=1e-6)


def _cunet_batch(batch: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    label = torch.zeros(batch, size, size, dtype=torch.int64)
    label[:, 10:22, 10:22] = 2
    label[:, 13:19, 13:19] = 1
    label[:, 15:17, 15:17] = 3
    brain = torch.zeros(batch, size, size, dtype=torch.bool)
    brain[:, 3:29, 3:29] = True
    return {"label": label, "brain_mask": brain}


def _zero_cunet_output(batch: int = 2, size: int = 32, aux: bool = True) -> FakeCUNetOutput:
    aux_outputs = tuple(torch.zeros(batch, 2, size, size) for _ in range(4)) + tuple(
        torch.zeros(batch, 4, size, size) for _ in range(4)
    )
    return FakeCUNetOutput(
        torch.zeros(batch, 2, size, size),
        torch.zeros(batch, 4, size, size),
        aux_outputs if aux else (),
    )


@pytest.mark.parametrize("lws", [True, False])
def test_cunet_loss_eq4_hand_computed(lws: bool) -> None:
    # Zero logits: every pixel's CE is ln 2 (2 classes) or ln 4 = 2 ln 2 (4 classes), and Eq. 1's
    # normalised weighted mean of a constant is that constant whatever the weights.
    # L1 = ln 2, L2 = 2 ln 2, aux = 4 ln 2 + 4 * 2 ln 2 = 12 ln 2.
    # Epoch 0: aux_weight = 0.1 -> total = 3 ln 2 + 1.2 ln 2 = 4.2 ln 2.
    # Epoch 25: aux_weight = 0.1 * 0.1^2 = 1e-3 (the floor) -> 3 ln 2 + 0.012 ln 2.
    loss = CUNetLoss(lws=lws, generator=torch.Generator().manual_seed(0))
    batch = _cunet_batch()
    total, parts = loss(_zero_cunet_output(), batch, aux_weight=aux_weight_at(0, PAPER))
    assert parts["loss_branch1"] == pytest.approx(LN2, rel=1e-6)
    assert parts["loss_branch2"] == pytest.approx(2 * LN2, rel=1e-6)
    assert parts["loss_aux"] == pytest.approx(12 * LN2, rel=1e-6)
    assert parts["aux_weight"] == pytest.approx(0.1)
    assert total.item() == pytest.approx(4.2 * LN2, rel=1e-6)
    total25, parts25 = loss(_zero_cunet_output(), batch, aux_weight=aux_weight_at(25, PAPER))
    assert parts25["aux_weight"] == pytest.approx(1e-3)
    assert total25.item() == pytest.approx(3.012 * LN2, rel=1e-6)
    # No weight given: the loss's own aux_weight (the recipe's loss.aux_weight, epoch 0's).
    total_default, parts_default = loss(_zero_cunet_output(), batch)
    assert parts_default["aux_weight"] == pytest.approx(0.1)
    assert total_default.item() == pytest.approx(4.2 * LN2, rel=1e-6)


def test_cunet_total_from_parts_and_gradients() -> None:
    generator = torch.Generator().manual_seed(3)
    batch = _cunet_batch()
    output = FakeCUNetOutput(
        torch.randn(2, 2, 32, 32, generator=generator).requires_grad_(True),
        torch.randn(2, 4, 32, 32, generator=generator).requires_grad_(True),
        tuple(
            torch.randn(2, c, 32, 32, generator=generator).requires_grad_(True)
            for c in (2, 2, 2, 2, 4, 4, 4, 4)
        ),
    )
    total, parts = CUNetLoss(generator=generator)(
        output, batch, aux_weight=aux_weight_at(12.5, PAPER)
    )
    assert parts["aux_weight"] == pytest.approx(0.01)
    expected = (
        parts["loss_branch1"] + parts["loss_branch2"] + parts["aux_weight"] * parts["loss_aux"]
    )
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert parts["total"] == pytest.approx(expected, rel=1e-6)
    total.backward()
    for tensor in (output.branch1, output.branch2, *output.aux):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_cunet_weights() -> None:
    batch = _cunet_batch()
    label, brain = batch["label"], batch["brain_mask"]
    loss = CUNetLoss(contour_width=4, generator=torch.Generator().manual_seed(0))
    w1, w2 = loss.weights(label, brain)
    tumour = label > 0
    # U-Net 2: tumour and the contour band only (band: 2 pixels outside the tumour), weight 1.
    near_tumour = torch.zeros_like(tumour)
    near_tumour[:, 8:24, 8:24] = True
    assert set(w2.unique().tolist()) == {0.0, 1.0}
    assert (w2[tumour] == 1).all() and (w2[~near_tumour] == 0).all()
    # U-Net 1: nothing outside the brain, contour pixels weigh alpha = 2, some brain sampled.
    assert (w1[~brain] == 0).all()
    assert (w1 == 2.0).sum() > 0
    assert ((w1 == 1.0) & ~near_tumour).sum() > 0
    # Without LWS: the brain mask for both U-Nets.
    plain1, plain2 = CUNetLoss(lws=False).weights(label, brain)
    assert torch.equal(plain1, brain.float()) and torch.equal(plain2, brain.float())


def test_cunet_without_lws_is_brain_masked_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(4)
    batch = _cunet_batch()
    output = FakeCUNetOutput(
        torch.randn(2, 2, 32, 32, generator=generator),
        torch.randn(2, 4, 32, 32, generator=generator),
        (),
    )
    total, parts = CUNetLoss(lws=False)(output, batch)
    brain = batch["brain_mask"].float()
    l1 = weighted_cross_entropy(output.branch1, (batch["label"] > 0).long(), brain)
    l2 = weighted_cross_entropy(output.branch2, batch["label"], brain)
    assert parts["loss_branch1"] == pytest.approx(l1.item(), rel=1e-6)
    assert total.item() == pytest.approx((l1 + l2).item(), rel=1e-6)
    assert "loss_aux" not in parts  # eval-mode output: no auxiliary heads


def test_cunet_aux_with_wrong_channels_raises() -> None:
    output = FakeCUNetOutput(
        torch.zeros(2, 2, 32, 32), torch.zeros(2, 4, 32, 32), (torch.zeros(2, 3, 32, 32),)
    )
    with pytest.raises(ModelError, match="3 channels"):
        CUNetLoss()(output, _cunet_batch())


@pytest.mark.parametrize("lws", [True, False])
def test_label_ce_loss(lws: bool) -> None:
    batch = _cunet_batch()
    # Zero logits over 4 classes: ln 4 whatever the weights.
    loss, parts = LabelCELoss(lws=lws, generator=torch.Generator().manual_seed(0))(
        torch.zeros(2, 4, 32, 32), batch
    )
    assert loss.item() == pytest.approx(2 * LN2, rel=1e-6)
    assert parts["total"] == pytest.approx(2 * LN2, rel=1e-6)
    # Missing brain mask: every pixel counts.
    logits = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    plain, _ = LabelCELoss()(logits, {"label": batch["label"]})
    expected = torch.nn.functional.cross_entropy(logits, batch["label"])
    assert plain.item() == pytest.approx(expected.item(), rel=1e-6)


def test_build_loss_dispatch() -> None:
    cfg = LossConfig(interp_decoder_weight=0.25, lws_alpha=3.0, lws_beta=2.0, aux_weight=0.2)
    two_stage = build_loss(SimpleNamespace(output_kind="regions"), cfg)
    assert isinstance(two_stage, TwoStageLoss) and two_stage.interp_decoder_weight == 0.25
    cunet = build_loss(SimpleNamespace(output_kind="cunet"), cfg)
    assert isinstance(cunet, CUNetLoss)
    assert (cunet.alpha, cunet.beta, cunet.aux_weight, cunet.lws) == (3.0, 2.0, 0.2, True)
    labels = build_loss(SimpleNamespace(output_kind="labels"), LossConfig(lws=False))
    assert isinstance(labels, LabelCELoss) and labels.lws is False
    with pytest.raises(ModelError, match="output_kind"):
        build_loss(SimpleNamespace(output_kind="boxes"), cfg)


def test_two_stage_loss_smoothing_penalises_false_positives_on_empty_crops() -> None:
    """With the paper's Dice an empty target gives no gradient; smoothed batch Dice + BCE does."""
    logits = torch.full((2, 3, 4, 4, 4), 2.0, requires_grad=True)  # confident false positives
    target = torch.zeros(2, 3, 4, 4, 4)
    batch = {"regions": target}
    paper = TwoStageLoss()
    loss, _ = paper(logits, batch)
    (grad,) = torch.autograd.grad(loss, logits)
    assert float(grad.abs().max()) == 0.0
    robust = TwoStageLoss(eps=1.0, smooth_nr=1.0, batch_dice=True, bce_weight=1.0)
    loss, _ = robust(logits, batch)
    (grad,) = torch.autograd.grad(loss, logits)
    assert float(grad.min()) > 0.0  # every logit is pushed down
    # Hand value of the BCE part: -log(1 - sigmoid(2)) per voxel, summed over 3 regions.
    bce = 3 * float(torch.nn.functional.softplus(torch.tensor(2.0)))
    probs_sq = 2 * 64 * float(torch.sigmoid(torch.tensor(2.0))) ** 2
    dice = 3 * (1 - 1 / (probs_sq + 1))
    assert float(loss.detach()) == pytest.approx(dice + bce, rel=1e-5)


def test_two_stage_loss_region_weights_scale_dice_and_cross_entropy_alike() -> None:
    """``loss.region_weights`` multiplies each region's Dice and BCE terms, in every stage."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 6, 6, 6, generator=gen)
    target = (torch.rand(2, 3, 6, 6, 6, generator=gen) > 0.6).float()
    kwargs = {"eps": 1.0, "smooth_nr": 1.0, "bce_weight": 3.0}
    output = FakeTwoStageOutput(logits, logits * 0.5, logits - 1.0)

    def per_region(out: torch.Tensor) -> torch.Tensor:
        """Each region's loss alone: the full loss of that one region's channel."""
        single = TwoStageLoss(**kwargs)
        return torch.stack(
            [single.region_loss(out[:, r : r + 1], target[:, r : r + 1]) for r in range(3)]
        )

    weights = (0.5, 2.0, 1.5)
    loss, _ = TwoStageLoss(**kwargs, region_weights=weights)(output, {"regions": target})
    expected = sum(float(per_region(out) @ torch.tensor(weights)) for out in output)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    plain, _ = TwoStageLoss(**kwargs)(output, {"regions": target})
    ones, _ = TwoStageLoss(**kwargs, region_weights=(1.0, 1.0, 1.0))(output, {"regions": target})
    assert float(ones) == pytest.approx(float(plain), rel=1e-6)
    built = build_loss(SimpleNamespace(output_kind="regions"), LossConfig(region_weights=weights))
    assert isinstance(built, TwoStageLoss) and built.region_weights == weights


def test_every_trainable_output_kind_has_one_loss() -> None:
    assert set(LOSS_FOR_KIND) == set(OUTPUT_KINDS) - {"probabilities"}
    for name in available_models():
        assert network_spec(name).output_kind in LOSS_FOR_KIND
    with pytest.raises(ModelError, match="'probabilities', which has no loss"):
        build_loss(SimpleNamespace(output_kind="probabilities"), LossConfig())
    with pytest.raises(ValueError, match="already registered"):
        register_loss("regions")(lambda cfg: TwoStageLoss())
