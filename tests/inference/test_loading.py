"""Loading models for inference (run dirs, snapshots, safety, refusals)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_members import save_model_checkpoint, tiny_member

from cascadeseg.data.preprocess import PreprocessConfig
from cascadeseg.errors import ModelError
from cascadeseg.inference.ensemble import ensemble_et_min_voxels
from cascadeseg.inference.loading import (
    LoadedModel,
    check_member,
    expand_model_paths,
    load_models,
)
from cascadeseg.models import build_model

TINY_UNET3D = {"base_width": 4, "depth": 1, "norm_groups": 2}


def write_checkpoint(
    path: Path,
    name: str = "unet3d",
    model_args: dict[str, Any] | None = None,
    overrides: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    torch.manual_seed(seed)
    model = build_model(name, **(TINY_UNET3D if model_args is None else model_args))
    return save_model_checkpoint(path, name, model, overrides=overrides, extra=extra)


def test_run_directory_expands_to_snapshots_else_best_else_last(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    with pytest.raises(ModelError, match="no checkpoints"):
        expand_model_paths([run])
    (ckpts / "last.pt").touch()
    assert expand_model_paths([run]) == [ckpts / "last.pt"]
    (ckpts / "best.pt").touch()
    assert expand_model_paths([run]) == [ckpts / "best.pt"]
    for epoch in (12, 10, 11):
        (ckpts / f"snapshot_{epoch:04d}.pt").touch()
    assert [p.name for p in expand_model_paths([run, ckpts / "last.pt"])] == [
        "snapshot_0010.pt",
        "snapshot_0011.pt",
        "snapshot_0012.pt",
        "last.pt",
    ]
    with pytest.raises(ModelError, match="no such checkpoint"):
        expand_model_paths([tmp_path / "missing.pt"])


def test_load_run_directory_snapshots_with_stored_postprocessing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for epoch in (3, 4):
        write_checkpoint(
            run / "checkpoints" / f"snapshot_{epoch:04d}.pt",
            overrides=("data.target_spacing=[2,2,2]", "data.crop_margin=2", "data.n4=false"),
            extra={"et_min_voxels": 7},
            seed=epoch,
        )
    members = load_models([run])
    assert len(members) == 2
    first = members[0]
    assert isinstance(first.network, torch.nn.Module) and not first.network.training
    assert (first.spatial_dims, first.output_kind, first.in_channels) == (3, "regions", 4)
    assert first.preprocess == PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), crop_margin=2)
    assert first.et_min_voxels == 7  # from the checkpoint's extra
    assert first.run_dir == run.resolve()
    # postprocess.json (written by tune-postprocess) wins over the checkpoint
    (run / "postprocess.json").write_text(json.dumps({"et_min_voxels": 250}))
    assert [m.et_min_voxels for m in load_models([run])] == [250, 250]
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        probs = first.probabilities(x)
    assert probs.shape == (1, 3, 8, 8, 8)
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0
    # snapshots hold different weights
    with torch.no_grad():
        assert not torch.equal(probs, members[1].probabilities(x))


def test_model_refused_when_channels_do_not_fit(tmp_path: Path) -> None:
    bad = write_checkpoint(tmp_path / "three.pt", model_args={**TINY_UNET3D, "in_channels": 3})
    with pytest.raises(ModelError, match="3 input channels, the data give 4"):
        load_models([bad])
    # a 2D model needs 4 x (2k + 1) channels for the recipe's slice context k
    two_d = write_checkpoint(
        tmp_path / "unet2d.pt",
        "unet2d",
        model_args={"in_channels": 4, "base_width": 4, "depth": 1},
        overrides=("data.slice_context=1",),
    )
    with pytest.raises(ModelError, match="4 modalities x 3 slices"):
        load_models([two_d])
    cunet = write_checkpoint(
        tmp_path / "cunet.pt", "cunet", model_args={"slice_context": 1, "base_width": 4, "depth": 1}
    )
    (member,) = load_models([cunet])
    assert (member.in_channels, member.slice_context, member.spatial_dims) == (12, 1, 2)


def test_members_must_agree(tmp_path: Path) -> None:
    a = write_checkpoint(tmp_path / "a.pt")
    b = write_checkpoint(tmp_path / "b.pt", overrides=("data.target_spacing=[2,2,2]",))
    with pytest.raises(ModelError, match="preprocessing"):
        load_models([a, b])
    c = write_checkpoint(
        tmp_path / "c.pt", "unet2d", model_args={"in_channels": 4, "base_width": 4, "depth": 1}
    )
    with pytest.raises(ModelError, match="2D model cannot join"):
        load_models([a, c])


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "a.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_args"]["base_width"] = 8
    torch.save(ckpt, path)
    with pytest.raises(ModelError, match="weights do not fit"):
        load_models([path])


class _Exploit:
    """Unpickling this runs ``Path.touch`` on a marker file: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_untrusted_checkpoint_cannot_execute_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "cascadeseg-checkpoint-1", "payload": _Exploit(marker)}, path)
    with pytest.raises(ModelError, match="refused: loading this file would run code") as err:
        load_models([path])
    assert not marker.exists()
    # One line of our own naming the file; never torch's advice to load it unsafely.
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "\x1b" not in message
    assert "weights_only" not in message and "getattr" in message
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ModelError) as err:
        load_models([raw])
    assert "weights_only" not in str(err.value) and str(raw) in str(err.value)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_check_member_and_stored_threshold_median(tmp_path: Path) -> None:
    def member(**kw: Any) -> LoadedModel:
        fields = {"name": "x", "output_kind": "regions", "source": tmp_path / "x.pt", **kw}
        return tiny_member(lambda x: x, **fields)

    check_member(member())
    with pytest.raises(ModelError, match="unknown output kind"):
        check_member(member(output_kind="logits"))
    assert ensemble_et_min_voxels([member(), member()]) is None
    values = [member(et_min_voxels=v) for v in (100, 300, 200)] + [member()]
    assert ensemble_et_min_voxels(values) == 200
