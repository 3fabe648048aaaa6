from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cascadeseg.models import TwoStageOutput, build_model
from cascadeseg.models.blocks import PreActResBlock, crop_to, pad_to_multiple
from cascadeseg.models.inspect import build_meta_model, layer_table
from cascadeseg.models.two_stage import mean_probability_logits

TINY = {"base_width": 8, "blocks": [1, 1, 1]}

# Table 1 of the two-stage paper at input 4 x 128^3, as (channels, downsampling factor).
TABLE1 = {
    "encoder.init_conv": (16, 1),
    "encoder.en_block1": (16, 1),
    "encoder.en_down1": (32, 2),
    "encoder.en_block2": (32, 2),
    "encoder.en_down2": (64, 4),
    "encoder.en_block3": (64, 4),
    "encoder.en_down3": (128, 8),
    "encoder.en_block4": (128, 8),
    "decoder.de_up3": (64, 4),
    "decoder.de_block3": (64, 4),
    "decoder.de_up2": (32, 2),
    "decoder.de_block2": (32, 2),
    "decoder.de_up1": (16, 1),
    "decoder.de_block1": (16, 1),
    "decoder.end_conv": (3, 1),
}


def _expected_shape(channels: int, factor: int, size: int) -> str:
    side = size // factor
    return f"{channels}x{side}x{side}x{side}"


def test_layer_shapes_match_table1() -> None:
    size = 32
    model = build_meta_model("two_stage")
    rows = {r.name: r for r in layer_table(model, (size,) * 3, depth=3)}
    for name, (channels, factor) in TABLE1.items():
        assert rows[f"stage1.{name}"].output_shape == _expected_shape(channels, factor, size)
        # Stage 2: same structure at doubled width (section 2.3), except the 3-channel output.
        width2 = channels if name == "decoder.end_conv" else 2 * channels
        assert rows[f"stage2.{name}"].output_shape == _expected_shape(width2, factor, size)
        if name.startswith("decoder."):
            interp = name.replace("decoder.", "interp_decoder.")
            assert rows[f"stage2.{interp}"].output_shape == _expected_shape(width2, factor, size)
            assert rows[f"stage2.{interp}"].training_only


def test_block_counts_and_layers_of_table1() -> None:
    model = build_model("two_stage")
    enc = model.stage1.encoder
    assert [len(enc.get_submodule(f"en_block{i}")) for i in range(1, 5)] == [1, 2, 2, 4]
    assert enc.init_conv[0].in_channels == 4 and enc.init_conv[0].kernel_size == (3, 3, 3)
    assert enc.init_conv[1].p == 0.2
    assert enc.en_down1.conv.stride == (2, 2, 2) and enc.en_down1.conv.kernel_size == (3, 3, 3)
    up = model.stage1.decoder.de_up3
    assert up.reduce.kernel_size == (1, 1, 1) and (
        up.reduce.in_channels,
        up.reduce.out_channels,
    ) == (
        128,
        64,
    )
    assert up.up.kernel_size == (2, 2, 2) and up.up.stride == (2, 2, 2)
    assert model.stage2.interp_decoder.de_up3.up is None  # trilinear interpolation
    blocks = [m for m in model.modules() if isinstance(m, PreActResBlock)]
    # (1+2+2+4 encoder + 3 decoder) in stage 1, the same in stage 2 with two decoders.
    assert len(blocks) == 12 + 15
    assert all(b.norm1.num_groups == 8 for b in blocks)
    # Stage 2 input: 4 modalities + 3 stage-1 probabilities; doubled width.
    assert model.stage2.encoder.init_conv[0].in_channels == 7
    assert model.stage2.encoder.init_conv[0].out_channels == 32
    assert len(model.stage2.encoder.en_block4) == 4
    assert model.stage2.encoder.en_block4[0].conv1.in_channels == 256


def test_train_and_eval_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("two_stage", **TINY)
    x = torch.randn(2, 4, 16, 16, 16)
    out = model.train()(x)
    assert isinstance(out, TwoStageOutput)
    assert [tuple(t.shape) for t in out] == [(2, 3, 16, 16, 16)] * 3
    y = model.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, 16, 16, 16)


def test_interpolation_decoder_never_runs_in_eval() -> None:
    model = build_model("two_stage", **TINY)
    calls: list[str] = []
    for name, module in model.stage2.interp_decoder.named_modules():
        module.register_forward_hook(lambda *_a, name=name: calls.append(name))
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        model.eval()(x)
    assert calls == []
    model.train()(x)
    assert "de_block1" in calls and "end_conv" in calls


def test_average_decoders_in_eval_is_the_mean_of_both_decoders_probabilities() -> None:
    torch.manual_seed(0)
    plain = build_model("two_stage", **TINY).eval()
    averaging = build_model("two_stage", **TINY, average_decoders=True).eval()
    averaging.load_state_dict(plain.state_dict())  # same weights: the option adds none
    x = torch.randn(2, 4, 16, 16, 16)
    with torch.no_grad():
        stage1, _ = plain.stage1(x)
        features = plain.stage2.encoder(torch.cat([x, torch.sigmoid(stage1)], dim=1))
        deconv = plain.stage2.decoder(features)
        interp = plain.stage2.interp_decoder(features)
        mean = (torch.sigmoid(deconv) + torch.sigmoid(interp)) / 2
        torch.testing.assert_close(plain(x), deconv)
        torch.testing.assert_close(torch.sigmoid(averaging(x)), mean, atol=1e-6, rtol=1e-5)
    # Training mode is the same with or without it; the option is saved with the model.
    torch.manual_seed(1)
    a = plain.train()(x)
    torch.manual_seed(1)
    b = averaging.train()(x)
    for left, right in zip(a, b, strict=True):
        torch.testing.assert_close(left, right)
    assert averaging.model_args["average_decoders"] is True
    assert averaging.training_only_modules() == []


def test_mean_probability_logits_stays_finite_for_confident_logits() -> None:
    a = torch.tensor([-60.0, 0.0, 3.0, 60.0, 80.0])
    b = torch.tensor([-30.0, 2.0, -3.0, 70.0, -80.0])
    got = mean_probability_logits(a, b)
    assert torch.isfinite(got).all()
    want = torch.logit((torch.sigmoid(a.double()) + torch.sigmoid(b.double())) / 2)
    torch.testing.assert_close(got[:3].double(), want[:3], atol=1e-5, rtol=1e-5)
    assert got[3] > 59 and abs(float(got[4])) < 1e-5  # ~60.7; and 1/2 from one sure each way


def test_stage2_loss_reaches_stage1_first_conv() -> None:
    torch.manual_seed(0)
    model = build_model("two_stage", **TINY).train()
    out = model(torch.randn(1, 4, 8, 8, 8))
    out.stage2.square().mean().backward()
    grad = model.stage1.encoder.init_conv[0].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


@pytest.mark.parametrize("size", [(9, 10, 11), (17, 8, 5)])
def test_odd_sizes_are_padded_and_cropped_back(size: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model("two_stage", **TINY).eval()
    x = torch.randn(1, 4, *size)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 3, *size)
        # Equal to running the network on the explicitly zero-padded input and cropping.
        multiple = model.size_multiple
        assert multiple == 4
        totals = [(-s) % multiple for s in size]
        amounts = [t // 2 for t in totals]
        pad = []
        for before, total in reversed(list(zip(amounts, totals))):
            pad += [before, total - before]
        full = model(F.pad(x, pad))
    index = tuple(slice(b, b + s) for b, s in zip(amounts, size))
    torch.testing.assert_close(y, full[(slice(None), slice(None), *index)])


def test_checkpointing_same_output_and_gradients() -> None:
    torch.manual_seed(0)
    plain = build_model("two_stage", **TINY, dropout=0.0).train()
    ckpt = build_model("two_stage", **TINY, dropout=0.0, checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 4, 8, 8, 8)
    outs = []
    for model in (plain, ckpt):
        out = model(x)
        sum(o.square().mean() for o in out).backward()
        outs.append(out)
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(a, b)
    for (name, pa), pb in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_model_args_rebuild_the_model() -> None:
    model = build_model("two_stage", base_width=8, blocks=(1, 1, 2))
    assert model.model_args["blocks"] == [1, 1, 2]
    assert model.model_args["stage2_width_factor"] == 2
    again = build_model("two_stage", **model.model_args)
    again.load_state_dict(model.state_dict())
    assert model.size_multiple == 4  # three levels -> two downsamplings


def test_stage_one_alone_is_the_cascades_stage_one() -> None:
    cascade = build_model("two_stage", **TINY).eval()
    alone = build_model("two_stage_stage1", **TINY).eval()
    stage1 = {k: v for k, v in cascade.state_dict().items() if k.startswith("stage1.")}
    alone.load_state_dict(stage1, strict=True)  # same module tree, nothing left over
    x = torch.randn(1, 4, 9, 10, 11)  # odd sizes: padded and cropped back
    with torch.no_grad():
        padded, index = pad_to_multiple(x, cascade.size_multiple)
        expected, _ = cascade.stage1(padded)
        out = alone(x)
    assert out.shape == (1, 3, 9, 10, 11)
    torch.testing.assert_close(out, crop_to(expected, index))
    alone.train()
    assert isinstance(alone(x), torch.Tensor)  # a plain logits tensor in training mode too


def test_stage1_only_runs_stage_one_and_leaves_stage_two_without_gradient() -> None:
    torch.manual_seed(0)
    model = build_model("two_stage", **TINY)
    x = torch.randn(1, 4, 9, 10, 11)
    calls: list[str] = []
    model.stage2.register_forward_hook(lambda *_a: calls.append("stage2"))
    model.set_stage1_only(True)
    out = model.train()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 9, 10, 11)
    out.square().mean().backward()
    assert calls == []
    assert all(p.grad is None for p in model.stage2.parameters())
    assert all(p.grad is not None for p in model.stage1.parameters())
    with torch.no_grad():
        padded, index = pad_to_multiple(x, model.size_multiple)
        expected, _ = model.stage1.eval()(padded)
        torch.testing.assert_close(model.eval()(x), crop_to(expected, index))
    model.set_stage1_only(False)  # back to the cascade; the flag is not a weight
    assert isinstance(model.train()(x), TwoStageOutput)
    assert not any("stage1_only" in k for k in model.state_dict())
