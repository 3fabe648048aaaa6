from __future__ import annotations

import torch

from cascadeseg.models import CUNetOutput, build_model, count_parameters

TINY = {"base_width": 4}


def test_default_widths_are_a_standard_unet() -> None:
    model = build_model("cunet")
    assert [e.conv1.out_channels for e in model.unet1.encoders] == [64, 128, 256, 512, 1024]
    assert [d.conv1.out_channels for d in model.unet1.decoders] == [512, 256, 128, 64]
    assert model.in_channels == 4


def test_between_net_connections() -> None:
    model = build_model("cunet", base_width=8)
    widths = [8, 16, 32, 64, 128]
    enc2 = model.unet2.encoders
    # U-Net 2's first encoding layer: image (4) + U-Net 1's last decoding layer (8).
    assert enc2[0].conv1.in_channels == 4 + 8
    # Encoding layers 2-4: U-Net 2's own pooled features + U-Net 1's decoding layer of that width.
    for level in (1, 2, 3):
        assert enc2[level].conv1.in_channels == widths[level - 1] + widths[level]
    # The bottom has no between-net connection.
    assert enc2[4].conv1.in_channels == widths[3]
    no_image = build_model("cunet", base_width=8, unet2_image_input=False)
    assert no_image.unet2.encoders[0].conv1.in_channels == 8


def test_between_net_connections_carry_gradient() -> None:
    # branch2 depends on U-Net 1's deepest decoding layer only through the between-net connection
    # at H/8 (and through the chain of its shallower layers).
    torch.manual_seed(0)
    model = build_model("cunet", **TINY).train()
    out = model(torch.randn(2, 4, 16, 16))
    out.branch2.square().mean().backward()
    grad = model.unet1.decoders[0].conv1.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_outputs_train_and_eval() -> None:
    torch.manual_seed(0)
    model = build_model("cunet", **TINY)
    x = torch.randn(2, 4, 32, 32)
    out = model.train()(x)
    assert isinstance(out, CUNetOutput)
    assert out.branch1.shape == (2, 2, 32, 32) and out.branch2.shape == (2, 4, 32, 32)
    assert len(out.aux) == 8
    assert [a.shape[1] for a in out.aux] == [2, 2, 2, 2, 4, 4, 4, 4]
    assert all(a.shape[2:] == (32, 32) for a in out.aux)
    with torch.no_grad():
        ev = model.eval()(x)
    assert ev.aux == ()
    assert ev.branch1.shape == (2, 2, 32, 32) and ev.branch2.shape == (2, 4, 32, 32)


def test_aux_heads_upsample_by_their_factor() -> None:
    model = build_model("cunet", **TINY)
    factors = [h.up.stride[0] if h.up is not None else 1 for h in model.aux1]
    assert factors == [8, 4, 2, 1]  # decoding layers at H/8, H/4, H/2, H
    assert model.aux2[0].out.out_channels == 4 and model.aux1[0].out.out_channels == 2


def test_slice_context_and_odd_sizes() -> None:
    model = build_model("cunet", base_width=4, slice_context=1).eval()
    assert model.in_channels == 12
    assert model.unet1.encoders[0].conv1.in_channels == 12
    with torch.no_grad():
        out = model(torch.randn(1, 12, 21, 18))
    assert out.branch1.shape == (1, 2, 21, 18) and out.branch2.shape == (1, 4, 21, 18)


def test_inference_parameter_count_excludes_aux_heads() -> None:
    model = build_model("cunet", **TINY)
    aux = sum(p.numel() for p in model.aux1.parameters()) + sum(
        p.numel() for p in model.aux2.parameters()
    )
    assert aux > 0
    assert count_parameters(model, training=True) - count_parameters(model, training=False) == aux
