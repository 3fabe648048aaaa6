"""ONNX export and the ONNX Runtime backend agree with PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from tiny_members import save_model_checkpoint

from cascadeseg.data.case import Case
from cascadeseg.inference.export import export_onnx
from cascadeseg.inference.loading import OnnxNetwork, load_models, load_onnx_model
from cascadeseg.inference.options import PredictOptions, options_from_recipe
from cascadeseg.inference.predictor import predict_case
from cascadeseg.models import build_model

TINY = {
    "two_stage": {"base_width": 4, "blocks": [1, 1], "norm_groups": 2, "dropout": 0.0},
    # The CPU recipe's inference: both stage-2 decoders averaged (log-sigmoid arithmetic).
    "two_stage_averaged": {
        "base_width": 4,
        "blocks": [1, 1],
        "norm_groups": 2,
        "dropout": 0.0,
        "average_decoders": True,
    },
    "unet3d": {"base_width": 4, "depth": 1, "norm_groups": 2},
    "cunet": {"base_width": 4, "depth": 2},
}


def _checkpoint(path: Path, name: str, seed: int = 0, overrides: tuple[str, ...] = ()) -> Path:
    torch.manual_seed(seed)
    registered = name.removesuffix("_averaged")
    model = build_model(registered, **TINY[name])
    # Non-trivial GroupNorm affine parameters, so the export is tested on them too.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_model_checkpoint(
        path, registered, model, overrides=overrides, extra={"et_min_voxels": 42}
    )


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("two_stage", (1, 4, 16, 24, 8)),
        ("two_stage_averaged", (1, 4, 16, 24, 8)),
        ("unet3d", (2, 4, 10, 6, 8)),
        ("cunet", (3, 4, 24, 16)),
    ],
)
def test_onnx_runtime_agrees_with_pytorch(
    tmp_path: Path, name: str, shape: tuple[int, ...]
) -> None:
    ckpt = _checkpoint(tmp_path / f"{name}.pt", name)
    (member,) = load_models([ckpt])
    path = export_onnx(member, tmp_path / f"{name}.onnx")
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    # dynamic axes: another batch and spatial size than the tracing example
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = member.probabilities(x)
    out = OnnxNetwork(path)(x)
    assert out.shape == ref.shape == (shape[0], 3, *shape[2:])
    assert float((out - ref).abs().max()) < 1e-4


def test_exported_file_carries_what_predict_needs(tmp_path: Path) -> None:
    overrides = ("data.crop_margin=3", "inference.tc_threshold_without_et=0.3")
    ckpt = _checkpoint(tmp_path / "m.pt", "cunet", overrides=(*overrides, "inference.tta=false"))
    path = export_onnx(load_models([ckpt]), tmp_path / "m.onnx")
    member = load_onnx_model(path)
    assert (member.spatial_dims, member.in_channels, member.output_kind) == (2, 4, "probabilities")
    assert member.name == "cunet" and member.size_divisor == 4
    assert member.preprocess.crop_margin == 3
    assert member.et_min_voxels == 42
    # The recipe's label thresholds travel (an export labels as its run does), not the rest.
    assert member.config == {"inference": {"threshold": 0.5, "tc_threshold_without_et": 0.3}}
    options = options_from_recipe([member], {})
    assert options.tc_threshold_without_et == 0.3
    assert options.settings_origin["tc_threshold_without_et"] == "recipe"


def test_snapshots_export_as_one_averaged_graph(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for epoch in (1, 2):
        _checkpoint(run / "checkpoints" / f"snapshot_{epoch:04d}.pt", "unet3d", seed=epoch)
    members = load_models([run])
    path = export_onnx(run, tmp_path / "avg.onnx")
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        ref = (members[0].probabilities(x) + members[1].probabilities(x)) / 2
    assert float((OnnxNetwork(path)(x) - ref).abs().max()) < 1e-4


def _case_options(backend: str, **kw: Any) -> PredictOptions:
    # fp32 on both sides (auto would run bf16 autocast in PyTorch on a CPU with native bf16).
    return PredictOptions(progress=False, device="cpu", backend=backend, precision="fp32", **kw)


def test_predict_with_onnx_backend_matches_torch(tmp_path: Path, tiny_case: Case) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", "two_stage")
    members = load_models([ckpt])
    torch_pred = predict_case(tiny_case, members, _case_options("torch", tta=False))
    onnx_pred = predict_case(tiny_case, members, _case_options("onnx", tta=False))
    assert np.abs(torch_pred.probabilities - onnx_pred.probabilities).max() < 1e-4
    # an exported file as --model gives the same
    path = export_onnx(members, tmp_path / "m.onnx")
    file_pred = predict_case(tiny_case, load_models([path]), _case_options("torch", tta=False))
    assert np.abs(file_pred.probabilities - torch_pred.probabilities).max() < 1e-4
    assert file_pred.info["et_min_voxels"] == 42 == torch_pred.info["et_min_voxels"]


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cascadeseg import cli

    ckpt = _checkpoint(tmp_path / "m.pt", "unet3d")
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--model", str(ckpt), "--out", str(out)]) == 0
    assert "max |diff|" in capsys.readouterr().out
    assert load_onnx_model(out).spatial_dims == 3
    assert cli.main(["export", "--model", str(ckpt), "--out", str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
