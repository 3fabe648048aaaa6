from __future__ import annotations

import pytest
import torch
from torch import nn

from cascadeseg.models.blocks import (
    ConvNormAct,
    DownConv,
    PreActResBlock,
    ResidualUnit,
    UpBlock,
    crop_to,
    pad_amounts,
    pad_to_multiple,
)


@pytest.mark.parametrize("dims", [2, 3])
def test_preact_block_is_identity_when_last_conv_is_zero(dims: int) -> None:
    block = PreActResBlock(16, spatial_dims=dims, norm_groups=8)
    assert block.norm1.num_groups == 8
    nn.init.zeros_(block.conv2.weight)
    nn.init.zeros_(block.conv2.bias)
    x = torch.randn(2, 16, *([6] * dims))
    assert torch.equal(block(x), x)


def test_preact_block_order_gn_relu_conv() -> None:
    # Hand-built: the residual is conv2(relu(gn2(conv1(relu(gn1(x)))))).
    torch.manual_seed(0)
    block = PreActResBlock(8, spatial_dims=3, norm_groups=8)
    x = torch.randn(1, 8, 4, 4, 4)
    expected = x + block.conv2(torch.relu(block.norm2(block.conv1(torch.relu(block.norm1(x))))))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("dims", [2, 3])
def test_checkpointing_gives_same_output_and_gradients(dims: int) -> None:
    torch.manual_seed(0)
    plain = PreActResBlock(8, spatial_dims=dims)
    ckpt = PreActResBlock(8, spatial_dims=dims, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, *([5] * dims))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), ckpt(xb)
    torch.testing.assert_close(ya, yb)
    (ya**2).sum().backward()
    (yb**2).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    for pa, pb in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


@pytest.mark.parametrize(
    ("checkpointing", "training", "expected_calls"),
    [
        (False, True, 1),
        (True, True, 2),  # forward + recomputation in backward
        (True, False, 1),  # eval mode: no checkpointing
    ],
)
def test_checkpointing_recomputes_only_when_training(
    checkpointing: bool, training: bool, expected_calls: int
) -> None:
    block = PreActResBlock(8, spatial_dims=3, checkpointing=checkpointing).train(training)
    calls = []
    block.conv1.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 8, 4, 4, 4, requires_grad=True)
    block(x).sum().backward()
    assert len(calls) == expected_calls


def test_residual_unit_shortcut_and_activation() -> None:
    same = ResidualUnit(8, 8, spatial_dims=2)
    assert isinstance(same.shortcut, nn.Identity)
    proj = ResidualUnit(4, 8, spatial_dims=2)
    assert isinstance(proj.shortcut, nn.Sequential)
    assert proj.shortcut[0].kernel_size == (1, 1)
    y = proj(torch.randn(2, 4, 6, 6))
    assert y.shape == (2, 8, 6, 6)
    assert float(y.detach().min()) >= 0.0  # post-activation: ReLU after the sum


def test_residual_unit_3d() -> None:
    unit = ResidualUnit(4, 8, spatial_dims=3)
    assert unit(torch.randn(2, 4, 4, 4, 4)).shape == (2, 8, 4, 4, 4)


@pytest.mark.parametrize("dims", [2, 3])
def test_down_conv_halves_size_doubles_channels(dims: int) -> None:
    down = DownConv(8, 16, spatial_dims=dims)
    assert down.conv.kernel_size == (3,) * dims and down.conv.stride == (2,) * dims
    assert down(torch.randn(1, 8, *([8] * dims))).shape == (1, 16, *([4] * dims))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["transposed", "interpolate"])
def test_up_block(dims: int, mode: str) -> None:
    up = UpBlock(16, 8, spatial_dims=dims, mode=mode)
    assert up.reduce.kernel_size == (1,) * dims
    assert (up.up is None) == (mode == "interpolate")
    assert up(torch.randn(1, 16, *([3] * dims))).shape == (1, 8, *([6] * dims))


def test_up_block_interpolation_of_constant_is_constant() -> None:
    up = UpBlock(2, 2, spatial_dims=3, mode="interpolate")
    with torch.no_grad():
        up.reduce.weight.copy_(torch.eye(2).view(2, 2, 1, 1, 1))
        up.reduce.bias.zero_()
    x = torch.full((1, 2, 2, 2, 2), 3.0)
    torch.testing.assert_close(up(x), torch.full((1, 2, 4, 4, 4), 3.0))


def test_up_block_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        UpBlock(4, 2, mode="nearest")


def test_pad_amounts_hand_computed() -> None:
    assert pad_amounts((5, 8, 9), 8) == [(1, 2), (0, 0), (3, 4)]
    assert pad_amounts((155,), 16) == [(2, 3)]


def test_pad_and_crop_round_trip() -> None:
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    padded, index = pad_to_multiple(x, 4)
    assert padded.shape == (2, 3, 8, 8)
    # 5 -> 8: one zero row before, two after; 6 -> 8: one column each side.
    assert torch.equal(padded[:, :, 0], torch.zeros(2, 3, 8))
    assert torch.equal(padded[:, :, :, 0], torch.zeros(2, 3, 8))
    assert torch.equal(padded[:, :, 1, 1], x[:, :, 0, 0])
    assert torch.equal(crop_to(padded, index), x)


def test_pad_nothing_when_already_multiple() -> None:
    x = torch.randn(1, 1, 8, 16, 8)
    padded, index = pad_to_multiple(x, 8)
    assert padded is x and index is None
    assert crop_to(padded, index) is x


@pytest.mark.parametrize("dilation", [1, 3])
def test_dilated_blocks_keep_the_size(dilation: int) -> None:
    unit = ResidualUnit(2, 5, spatial_dims=2, dilation=dilation)
    layer = ConvNormAct(2, 5, spatial_dims=3, dilation=dilation)
    assert unit.conv1.dilation == (dilation,) * 2 and unit.conv2.padding == (dilation,) * 2
    assert layer[0].dilation == (dilation,) * 3
    assert unit(torch.randn(1, 2, 9, 11)).shape == (1, 5, 9, 11)
    assert layer(torch.randn(1, 2, 7, 9, 5)).shape == (1, 5, 7, 9, 5)
