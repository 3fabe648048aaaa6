from __future__ import annotations

import torch
from torch import nn

from cascadeseg.models import build_model


def test_unet2d_ronneberger_layout() -> None:
    model = build_model("unet2d")
    assert model.output_kind == "labels" and model.spatial_dims == 2
    assert [e[0][0].out_channels for e in model.encoders] == [64, 128, 256, 512, 1024]
    # Two conv-BN-ReLU per level, max-pool down, 2x2 stride-2 transposed conv up.
    assert [type(m).__name__ for m in model.encoders[0][0]] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert len(model.encoders[0]) == 2
    assert isinstance(model.pool, nn.MaxPool2d)
    assert model.ups[0].kernel_size == (2, 2) and model.ups[0].stride == (2, 2)
    # Skips by concatenation: the first decoder conv sees twice the level's width.
    assert model.decoders[0][0][0].in_channels == 2 * 512
    assert model.end_conv.out_channels == 4


def test_unet2d_shapes_and_odd_sizes() -> None:
    model = build_model("unet2d", base_width=4).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 4, 16, 16)).shape == (2, 4, 16, 16)
        assert model(torch.randn(1, 4, 19, 13)).shape == (1, 4, 19, 13)


def test_unet3d_layout_and_shapes() -> None:
    model = build_model("unet3d")
    assert model.output_kind == "regions" and model.spatial_dims == 3
    assert [e[0][0].out_channels for e in model.encoders] == [16, 32, 64, 128, 256]
    assert isinstance(model.encoders[0][0][1], nn.GroupNorm)
    assert model.encoders[0][0][1].num_groups == 8
    small = build_model("unet3d", base_width=8, depth=2).eval()
    with torch.no_grad():
        assert small(torch.randn(1, 4, 9, 8, 6)).shape == (1, 3, 9, 8, 6)


def test_unet3d_is_comparable_to_stage1() -> None:
    unet = sum(p.numel() for p in build_model("unet3d").parameters())
    stage1 = sum(p.numel() for p in build_model("two_stage").stage1.parameters())
    assert 0.5 < unet / stage1 < 2.0
