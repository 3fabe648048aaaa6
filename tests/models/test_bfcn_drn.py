"""BFCN and DRN (the CU-Net paper's Table 1 baselines): shapes, learning, registry round trip."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cascadeseg.cli import main
from cascadeseg.config import LossConfig
from cascadeseg.losses import BFCNLoss, build_loss, label_boundaries
from cascadeseg.models import BFCNOutput, build_model, count_parameters, region_probabilities
from cascadeseg.models.drn import DRN

TINY_BFCN = {"base_width": 4, "branch_width": 4}
TINY_DRN = {"stem_width": 4, "widths": [4, 8], "dilations": [1, 2]}


@pytest.mark.parametrize(("levels", "side_levels"), [(1, 1), (3, 1), (3, 3), (4, 2)])
@pytest.mark.parametrize("size", [(16, 16), (13, 22)])
def test_bfcn_shapes(levels: int, side_levels: int, size: tuple[int, int]) -> None:
    model = build_model("bfcn", levels=levels, side_levels=side_levels, **TINY_BFCN).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 4, *size))
    assert isinstance(out, BFCNOutput)
    assert out.tissue.shape == (2, 4, *size) and out.fused.shape == (2, 4, *size)
    assert out.boundary.shape == (2, 2, *size)
    assert region_probabilities(out, "bfcn").shape == (2, 3, *size)


@pytest.mark.parametrize("dilations", [[1, 2], [4, 8]])
@pytest.mark.parametrize("size", [(16, 16), (11, 19)])
@pytest.mark.parametrize("degrid", [[], [2, 1]])
def test_drn_keeps_full_resolution(
    dilations: list[int], size: tuple[int, int], degrid: list[int]
) -> None:
    model = build_model(
        "drn", stem_width=4, widths=[4, 8], dilations=dilations, degrid_dilations=degrid
    ).eval()
    # No pooling or strided layer anywhere: full resolution throughout.
    for module in model.modules():
        assert not isinstance(module, (torch.nn.MaxPool2d, torch.nn.AvgPool2d))
        if isinstance(module, torch.nn.Conv2d):
            assert module.stride == (1, 1)
    with torch.no_grad():
        out = model(torch.randn(2, 4, *size))
    assert out.shape == (2, 4, *size)
    dilated = {m.dilation[0] for m in model.groups.modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(dilations) <= dilated


def test_drn_defaults_are_documented_layout() -> None:
    model = build_model("drn")
    assert isinstance(model, DRN) and model.output_kind == "labels" and model.spatial_dims == 2
    assert len(model.groups) == 6 * 2  # 6 groups of 2 residual blocks
    assert [b.conv1.dilation[0] for b in model.groups[::2]] == [1, 1, 2, 4, 8, 16]
    # Measured before DRN was assembled from models/blocks.py: the same network.
    assert count_parameters(model, training=True) == 1_776_772


def test_drn_loads_checkpoints_of_its_former_block_names() -> None:
    torch.manual_seed(0)
    model = build_model("drn", **TINY_DRN).eval()
    former = {
        "conv1.": "body.0.0.",
        "norm1.": "body.0.1.",
        "conv2.": "body.1.0.",
        "norm2.": "body.1.1.",
    }
    old_state = {}
    for key, value in model.state_dict().items():
        for new, old in former.items():
            key = key.replace(f".{new}", f".{old}") if key.startswith("groups.") else key
        old_state[key] = value
    assert any(".body.1.1.running_var" in key for key in old_state)
    again = build_model("drn", **TINY_DRN).eval()
    again.load_state_dict(old_state, strict=True)
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_drn_rejects_mismatched_lists() -> None:
    from cascadeseg.errors import ModelError

    with pytest.raises(ModelError, match="widths and dilations"):
        build_model("drn", widths=[4, 8], dilations=[1])


def test_label_boundaries_on_a_tiny_map() -> None:
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[0, 2:6, 2:6] = 2  # a 4x4 square of edema
    label[0, 3:5, 3:5] = 1  # with a 2x2 necrosis inside
    boundary = label_boundaries(label, 2)[0]
    expected = torch.zeros(8, 8, dtype=torch.long)
    expected[1:7, 1:7] = 1  # one pixel each side of the square's edge...
    # ...and the necrosis's edge: every pixel of the 4x4 square touches another label.
    assert torch.equal(boundary, expected)
    # A single label has no boundary (the image border is not one).
    assert int(label_boundaries(torch.ones(1, 5, 5, dtype=torch.long), 2).sum()) == 0
    # Width 4: two pixels each side of a straight edge.
    half = torch.zeros(1, 6, 10, dtype=torch.long)
    half[..., 5:] = 3
    assert label_boundaries(half, 4)[0, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="even"):
        label_boundaries(half, 3)


def _tiny_batch() -> dict[str, torch.Tensor]:
    label = torch.zeros(2, 16, 16, dtype=torch.long)
    label[:, 4:12, 4:12] = 2
    label[:, 6:10, 6:10] = 3
    label[1, 7:9, 7:9] = 1
    image = torch.randn(2, 4, 16, 16) * 0.1
    image[:, 0] += (label > 0).float() + 0.5 * (label == 3).float()
    brain = torch.ones(2, 16, 16, dtype=torch.bool)
    return {"image": image, "label": label, "brain_mask": brain}


def _train_steps(model: torch.nn.Module, loss_fn: Any, steps: int) -> tuple[float, float]:
    batch = _tiny_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    first = last = 0.0
    for i in range(steps):
        total, _ = loss_fn(model(batch["image"]), batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        last = float(total.detach())
        first = last if i == 0 else first
    return first, last


@pytest.mark.parametrize(("name", "args"), [("bfcn", TINY_BFCN), ("drn", TINY_DRN)])
def test_a_few_training_steps_lower_the_loss(name: str, args: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = build_model(name, **args)
    loss_fn = build_loss(model, LossConfig(lws=False))
    first, last = _train_steps(model, loss_fn, 8)
    assert last < first * 0.8


def test_bfcn_loss_parts_and_weight() -> None:
    torch.manual_seed(0)
    model = build_model("bfcn", **TINY_BFCN).train()
    batch = _tiny_batch()
    out = model(batch["image"])
    loss = build_loss(model, LossConfig(boundary_weight=0.5, boundary_width=2))
    assert isinstance(loss, BFCNLoss) and loss.boundary_weight == 0.5
    total, parts = loss(out, batch)
    expected = parts["loss_tissue"] + 0.5 * parts["loss_boundary"] + parts["loss_fused"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    # The boundary term depends on the boundary branch only.
    loss(out, batch)[0].backward()
    assert model.boundary_out.weight.grad is not None


@pytest.mark.parametrize(("name", "args"), [("bfcn", TINY_BFCN), ("drn", TINY_DRN)])
def test_registry_round_trip(name: str, args: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = build_model(name, **args).eval()
    again = build_model(name, **model.model_args).eval()
    again.load_state_dict(model.state_dict())
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        a, b = (
            region_probabilities(model(x), model.output_kind),
            region_probabilities(again(x), again.output_kind),
        )
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["bfcn", "drn"])
def test_cli_info(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", name, "--input-size", "64", "64"]) == 0
    printed = capsys.readouterr().out
    assert f"model: {name}" in printed and "parameters (inference)" in printed
