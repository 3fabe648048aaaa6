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
    # U-Net 2's first encoding layer: U-Net 1's last decoding layer (8) only, as the paper.
    assert enc2[0].conv1.in_channels == 8
    # Encoding layers 2-4: U-Net 2's own pooled features + U-Net 1's decoding layer of that width.
    for level in (1, 2, 3):
        assert enc2[level].conv1.in_channels == widths[level - 1] + widths[level]
    # The bottom has no between-net connection.
    assert enc2[4].conv1.in_channels == widths[3]
    # The option beyond the paper: the image (4 channels) goes into U-Net 2 as well.
    with_image = build_model("cunet", base_width=8, unet2_image_input=True)
    assert with_image.unet2.encoders[0].conv1.in_channels == 4 + 8


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


def _aux_input_sizes(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    sizes: list[tuple[int, ...]] = []
    hooks = [
        head.register_forward_hook(lambda _m, inp, _o: sizes.append(tuple(inp[0].shape[1:])))
        for head in [*model.aux1, *model.aux2]
    ]
    model.train()(x)
    for hook in hooks:
        hook.remove()
    return sizes


def test_aux_heads_attach_below_full_resolution_and_upsample() -> None:
    # Paper (sec. 2.1, Fig. 1): every auxiliary supervision up-samples with a deconvolution, so
    # the 4 heads per net attach to the bottom (H/16) and the decoding layers at H/8, H/4, H/2.
    model = build_model("cunet", **TINY)
    factors = [h.up.stride[0] for h in [*model.aux1, *model.aux2]]
    assert factors == [16, 8, 4, 2] * 2
    assert model.aux2[0].out.out_channels == 4 and model.aux1[0].out.out_channels == 2
    sizes = _aux_input_sizes(model, torch.randn(1, 4, 32, 32))
    widths = [64, 32, 16, 8]  # base 4: bottom 64, decoding layers 32, 16, 8
    assert sizes == [(w, 32 // f, 32 // f) for w, f in zip(widths, [16, 8, 4, 2])] * 2
    # None of them is a copy of the branch head (a 1x1 conv on the full-resolution layer).
    assert all(h.up is not None for h in [*model.aux1, *model.aux2])


def test_aux_heads_on_decoding_layers_option() -> None:
    model = build_model("cunet", aux_from="decoders", **TINY)
    factors = [h.up.stride[0] if h.up is not None else 1 for h in model.aux1]
    assert factors == [8, 4, 2, 1]  # decoding layers at H/8, H/4, H/2, H
    sizes = _aux_input_sizes(model, torch.randn(1, 4, 32, 32))
    assert [s[1] for s in sizes] == [4, 8, 16, 32] * 2


def test_aux_outputs_on_request_in_eval_mode() -> None:
    model = build_model("cunet", **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 16, 16), aux=True)
    assert len(out.aux) == 8 and all(a.shape[2:] == (16, 16) for a in out.aux)


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


def test_checkpoints_from_before_aux_from_still_load() -> None:
    from cascadeseg.models import build_saved_model

    # Saved arguments of a checkpoint written when the heads sat on the decoding layers.
    old = build_model("cunet", aux_from="decoders", unet2_image_input=True, **TINY)
    saved = {k: v for k, v in old.model_args.items() if k != "aux_from"}
    again = build_saved_model("cunet", saved)
    again.load_state_dict(old.state_dict(), strict=True)
    assert again.model_args["aux_from"] == "decoders"
    # New checkpoints store aux_from and get what they say.
    assert build_saved_model("cunet", build_model("cunet", **TINY).model_args).aux_stages == [
        0,
        1,
        2,
        3,
    ]
