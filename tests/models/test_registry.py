from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from cascadeseg.cli import main
from cascadeseg.errors import ModelError
from cascadeseg.models import (
    OUTPUT_KINDS,
    CUNetOutput,
    SegmentationModule,
    SegmentationNetwork,
    TwoStageOutput,
    available_models,
    build_model,
    count_parameters,
    model_defaults,
    network_spec,
    region_probabilities,
    register,
    register_output_kind,
    unregister,
)
from cascadeseg.models.inspect import build_meta_model, count_flops
from cascadeseg.models.protocol import contract_problems

# Tiny widths and sizes so every model runs forward and backward in well under a second.
TINY: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "two_stage": ({"base_width": 8, "blocks": [1, 1, 1]}, (2, 4, 8, 8, 8)),
    "two_stage_stage1": ({"base_width": 8, "blocks": [1, 1, 1]}, (2, 4, 8, 8, 8)),
    "unet3d": ({"base_width": 8, "depth": 2}, (2, 4, 8, 8, 8)),
    "cunet": ({"base_width": 4}, (2, 4, 16, 16)),
    "unet2d": ({"base_width": 4}, (2, 4, 16, 16)),
    "bfcn": ({"base_width": 4, "branch_width": 4}, (2, 4, 16, 16)),
    "drn": ({"stem_width": 4, "widths": [4, 8], "dilations": [1, 2]}, (2, 4, 16, 16)),
}


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _tensors(item)]


def test_all_models_registered() -> None:
    assert available_models() == [
        "bfcn",
        "cunet",
        "drn",
        "two_stage",
        "two_stage_stage1",
        "unet2d",
        "unet3d",
    ]


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("training", [True, False])
def test_every_model_forward_backward(name: str, training: bool) -> None:
    assert set(TINY) == set(available_models())
    torch.manual_seed(0)
    overrides, shape = TINY[name]
    model = build_model(name, **overrides).train(training)
    assert model.spatial_dims == len(shape) - 2
    assert model.in_channels == shape[1]
    out = model(torch.randn(shape))
    tensors = _tensors(out)
    assert all(t.shape[0] == shape[0] and t.shape[2:] == shape[2:] for t in tensors)
    sum(t.float().square().mean() for t in tensors).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    probs = region_probabilities(out, model.output_kind)
    assert probs.shape == (shape[0], 3, *shape[2:])


def test_build_model_overrides_and_model_args() -> None:
    model = build_model("unet3d", base_width=8)
    assert model.model_args == {**model_defaults("unet3d"), "base_width": 8}
    assert model.encoders[0][0][0].out_channels == 8
    assert model_defaults("two_stage")["blocks"] == [1, 2, 2, 4]


def test_unknown_model_lists_names() -> None:
    names = r"bfcn, cunet, drn, two_stage, two_stage_stage1, unet2d, unet3d"
    with pytest.raises(ModelError, match=rf"unknown model 'vnet'.*{names}"):
        build_model("vnet")


def test_unknown_argument_lists_valid_ones() -> None:
    with pytest.raises(ModelError, match=r"no argument.*width.*base_width"):
        build_model("unet2d", width=3)


def test_invalid_argument_value_is_model_error() -> None:
    with pytest.raises(ModelError, match="two_stage"):
        build_model("two_stage", base_width=12)  # not divisible by 8 groups


def test_region_probabilities_regions() -> None:
    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0)]).view(1, 3, 1, 1, 1)
    expected = torch.tensor([0.5, 0.75, 0.25]).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(region_probabilities(logits, "regions"), expected)
    wrapped = TwoStageOutput(torch.zeros_like(logits), logits, torch.zeros_like(logits))
    torch.testing.assert_close(region_probabilities(wrapped, "regions"), expected)


def test_region_probabilities_labels() -> None:
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).view(1, 4, 1, 1)
    expected = torch.tensor([0.9, 0.2 + 0.4, 0.4]).view(1, 3, 1, 1)
    torch.testing.assert_close(region_probabilities(logits, "labels"), expected)


def test_region_probabilities_cunet() -> None:
    branch1 = torch.log(torch.tensor([0.2, 0.8])).view(1, 2, 1, 1)
    # Background 0.5 is ignored; tumour classes NCR, ED, ET renormalise to 0.1, 0.3, 0.6.
    branch2 = torch.log(torch.tensor([0.5, 0.1, 0.3, 0.6])).view(1, 4, 1, 1)
    probs = region_probabilities(CUNetOutput(branch1, branch2, ()), "cunet")
    expected = torch.tensor([0.8, 0.8 * 0.7, 0.8 * 0.6]).view(1, 3, 1, 1)
    torch.testing.assert_close(probs, expected)


def test_region_probabilities_errors() -> None:
    with pytest.raises(ModelError, match="unknown output kind"):
        region_probabilities(torch.zeros(1, 3, 2, 2), "logits")
    with pytest.raises(ModelError, match="3 channels"):
        region_probabilities(torch.zeros(1, 4, 2, 2), "regions")
    with pytest.raises(ModelError, match="CUNetOutput"):
        region_probabilities(torch.zeros(1, 4, 2, 2), "cunet")


def test_parameter_counts_two_stage() -> None:
    model = build_model("two_stage")
    interp = sum(p.numel() for p in model.stage2.interp_decoder.parameters())
    assert count_parameters(model, training=True) == sum(p.numel() for p in model.parameters())
    assert (
        count_parameters(model, training=False) == count_parameters(model, training=True) - interp
    )
    # Hand count of one pre-activation block at 16 channels: 2 GN (2*16) + 2 conv (27*16*16+16).
    block = model.stage1.encoder.en_block1[0]
    assert count_parameters(block, training=True) == 2 * 2 * 16 + 2 * (27 * 16 * 16 + 16)


def test_flops_of_paper_network() -> None:
    # 1.49 TFLOP per 128^3 forward and 2.79 TFLOP at 160x192x128 (docs/BRATS-FACTS anchors).
    model = build_meta_model("two_stage")
    assert count_flops(model, (128, 128, 128)) == pytest.approx(1.49e12, rel=0.01)
    assert count_flops(model, (160, 192, 128)) == pytest.approx(2.79e12, rel=0.01)
    # A single conv by hand: 2 * k^3 * Cin * Cout * voxels.
    conv_only = torch.nn.Conv3d(4, 16, 3, padding=1)
    conv_only.spatial_dims, conv_only.in_channels = 3, 4  # type: ignore[assignment]
    assert count_flops(conv_only, (8, 8, 8)) == 2 * 27 * 4 * 16 * 8**3


def test_info_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "two_stage", "base_width=8", "--input-size", "16", "16", "16"]) == 0
    out = capsys.readouterr().out
    model = build_model("two_stage", base_width=8)
    assert f"parameters (training):  {count_parameters(model, training=True):,}" in out
    assert f"parameters (inference): {count_parameters(model, training=False):,}" in out
    assert "stage1.encoder.en_down1" in out and "16x8x8x8" in out
    assert "stage2.interp_decoder *" in out


def test_info_command_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["info", "unet2d", "base_width"]) == 2


def test_network_spec_describes_each_network_without_building_it() -> None:
    for name, (overrides, _shape) in TINY.items():
        spec = network_spec(name)
        model = build_model(name, **overrides)
        assert spec.name == name and isinstance(model, spec.network)
        assert (spec.spatial_dims, spec.output_kind) == (model.spatial_dims, model.output_kind)
        assert spec.in_channels == model.in_channels == 4
        assert spec.defaults == model_defaults(name) and spec.output_kind in OUTPUT_KINDS
        assert isinstance(model, SegmentationModule) and isinstance(model, SegmentationNetwork)
        assert not contract_problems(model)
    assert network_spec("cunet").saved_defaults == {"aux_from": "decoders"}
    assert network_spec("unet3d").saved_defaults == {}
    # model_defaults hands out copies: changing one leaves the registry as it was.
    model_defaults("two_stage")["blocks"].append(9)
    assert model_defaults("two_stage")["blocks"] == [1, 2, 2, 4]


class _NoInChannels(torch.nn.Module):
    spatial_dims = 2
    output_kind = "labels"

    def __init__(self, *, width: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, width, 1)


def test_register_checks_the_class_and_build_model_the_contract() -> None:
    class WrongKind(_NoInChannels):
        output_kind = "boxes"

    class WrongDims(_NoInChannels):
        spatial_dims = 4

    with pytest.raises(ValueError, match="output_kind must be one of regions, labels"):
        register("wrong_kind")(WrongKind)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        register("wrong_dims")(WrongDims)
    with pytest.raises(ValueError, match="already registered"):
        register("unet3d")(_NoInChannels)
    assert "wrong_kind" not in available_models()
    register("no_in_channels")(_NoInChannels)
    try:
        with pytest.raises(ModelError, match="breaks the network contract: no attribute in_chan"):
            build_model("no_in_channels")
    finally:
        unregister("no_in_channels")
    with pytest.raises(ModelError, match="unknown model"):
        unregister("no_in_channels")
    assert contract_problems(object()) == [
        "no attribute spatial_dims",
        "no attribute in_channels",
        "no attribute output_kind",
        "no attribute size_multiple",
        "no attribute model_args",
        "not callable",
    ]


def test_output_kind_table() -> None:
    assert list(OUTPUT_KINDS) == ["regions", "labels", "cunet", "bfcn", "probabilities"]
    assert all(kind.name == name and kind.returns for name, kind in OUTPUT_KINDS.items())
    probs = torch.rand(1, 3, 2, 2)
    assert region_probabilities(probs, "probabilities") is probs
    with pytest.raises(ModelError, match="needs 3 channels"):
        region_probabilities(torch.rand(1, 4, 2, 2), "probabilities")
    with pytest.raises(ValueError, match="already registered"):
        register_output_kind("labels", returns="something else")(torch.sigmoid)
