"""Snapshot ensembles: the paper's pairing (snapshot i with flip i) against every flip on every
snapshot, and the pass counts recorded per case."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from tiny_members import tiny_checkpoint, tiny_member
from torch import nn

from cascadeseg import cli
from cascadeseg.data.writers import write_case
from cascadeseg.errors import ConfigError
from cascadeseg.inference.ensemble import flip_plan, is_snapshot
from cascadeseg.inference.loading import LoadedModel
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.predictor import predict_preprocessed
from cascadeseg.inference.tta import flip_combinations, paired_flip_indices
from toy import make_tiny_case

QUIET = PredictOptions(
    progress=False, device="cpu", sliding_window="never", flips_per_call=1, precision="fp32"
)


class TinyConv(nn.Module):
    """A 3x3x3 convolution: not flip-equivariant, so every (snapshot, flip) pair differs."""

    output_kind = "probabilities"
    spatial_dims = 3
    in_channels = 4

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv3d(4, 3, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


def write_checkpoint(path: Path, seed: int, overrides: tuple[str, ...] = ()) -> Path:
    """A tiny ``unet3d`` checkpoint with its recipe (``overrides`` on the default one)."""
    return tiny_checkpoint(path, seed=seed, overrides=overrides)


def snapshot_member(run: Path, index: int, name: str | None = None) -> LoadedModel:
    source = run / "checkpoints" / (name or f"snapshot_{index:04d}.pt")
    return tiny_member(TinyConv(index).eval(), source=source, run_dir=run)


def test_paired_flip_indices_rule() -> None:
    assert paired_flip_indices(8, 8) == [[i] for i in range(8)]  # the paper
    assert paired_flip_indices(3, 8) == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert paired_flip_indices(1, 8) == [list(range(8))]
    assert paired_flip_indices(10, 8) == [[i % 8] for i in range(10)]
    assert paired_flip_indices(4, 1) == [[0]] * 4  # no TTA: the identity for each
    for n in range(1, 12):
        shares = paired_flip_indices(n, 8)
        assert sorted(f for share in shares for f in share) == sorted(
            list(range(8)) + [k % 8 for k in range(8, max(n, 8))]
        )
    with pytest.raises(ValueError):
        paired_flip_indices(0, 8)


def _passes(members: list[LoadedModel], mode: str, tta: bool = True) -> int:
    return sum(len(flips) for flips in flip_plan(members, mode, tta))


def test_pass_counts_paired_and_product(tmp_path: Path) -> None:
    eight = [snapshot_member(tmp_path / "run", i) for i in range(8)]
    assert all(is_snapshot(m) for m in eight)
    assert _passes(eight, "paired") == 8
    assert _passes(eight, "product") == 64
    assert flip_plan(eight, "paired") == [[f] for f in flip_combinations(3)]
    three = eight[:3]
    assert _passes(three, "paired") == 8 and _passes(three, "product") == 24
    assert _passes(three, "paired", tta=False) == 3
    # Two runs' snapshots pair within their own run; a best.pt runs every flip.
    other = [snapshot_member(tmp_path / "other", i) for i in range(2)]
    best = snapshot_member(tmp_path / "third", 0, name="best.pt")
    assert not is_snapshot(best)
    plan = flip_plan([*three, *other, best], "paired")
    assert [len(p) for p in plan] == [3, 3, 2, 4, 4, 8]
    with pytest.raises(ConfigError):
        flip_plan(three, "sometimes")
    with pytest.raises(ConfigError):
        PredictOptions(ensemble_mode="sometimes")


def _hand_average(
    members: list[LoadedModel], shares: list[list[tuple[int, ...]]], x: torch.Tensor
) -> np.ndarray:
    """Mean over members of each member's mean over its flips, computed directly."""
    per_member = []
    with torch.no_grad():
        for member, flips in zip(members, shares):
            outs = [torch.flip(member.network(torch.flip(x, f)), f) for f in flips]
            per_member.append(torch.stack(outs).mean(0)[0])
    return torch.stack(per_member).mean(0).numpy()


@pytest.mark.parametrize("n", [8, 3])
def test_paired_equals_hand_computed_average(tmp_path: Path, n: int) -> None:
    members = [snapshot_member(tmp_path / "run", i) for i in range(n)]
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 16, 16, 16)).astype(np.float32)
    pre: Any = SimpleNamespace(image=image, brain_mask=np.ones((16, 16, 16), bool))
    x = torch.from_numpy(image)[None]
    flips = flip_combinations(3)
    paired = [[flips[j] for j in share] for share in paired_flip_indices(n, 8)]
    mean, _, info = predict_preprocessed(pre, members, QUIET)
    np.testing.assert_allclose(mean, _hand_average(members, paired, x), atol=1e-5)
    assert info["passes"] == 8 and info["ensemble_mode"] == "paired"
    product, _, info = predict_preprocessed(pre, members, replace(QUIET, ensemble_mode="product"))
    np.testing.assert_allclose(product, _hand_average(members, [flips] * n, x), atol=1e-5)
    assert info["passes"] == 8 * n
    assert float(np.abs(product - mean).max()) > 1e-4  # the two modes really differ here


def test_cli_ensemble_mode_and_passes_in_case_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_case(make_tiny_case(seed=0, case_id="BraTS2021_00000"), data, "brats2021")
    run = tmp_path / "run"
    for i in range(3):
        write_checkpoint(run / "checkpoints" / f"snapshot_{i:04d}.pt", seed=i)
    common = ["--input", str(data), "--no-progress", "--device", "cpu", "--model", str(run)]
    passes = {}
    for mode in (None, "product"):
        out = tmp_path / f"out-{mode}"
        extra = [] if mode is None else ["--ensemble-mode", mode]
        assert cli.main(["predict", *common, "--output", str(out), *extra]) == 0
        settings = json.loads((out / "BraTS2021_00000.json").read_text())["settings"]
        passes[settings["ensemble_mode"]] = settings["passes"]
        assert [len(m["flips"]) for m in settings["members"]] == (
            [3, 3, 2] if mode is None else [8, 8, 8]
        )
    assert passes == {"paired": 8, "product": 24}


def test_maps_are_not_added_to_a_segmentation_of_the_other_mode(tmp_path: Path) -> None:
    from cascadeseg.inference.predictor import predict

    data = tmp_path / "data"
    write_case(make_tiny_case(seed=0, case_id="c1"), data, "brats2021")
    members = [snapshot_member(tmp_path / "run", i) for i in range(2)]
    out = tmp_path / "out"
    assert predict(members, data, out, QUIET)[0].status == "ok"
    product = replace(QUIET, ensemble_mode="product", save_probabilities=True)
    result = predict(members, data, out, product)[0]
    assert result.status == "skipped" and "paired snapshot ensemble" in result.message
    paired = replace(QUIET, save_probabilities=True)
    assert predict(members, data, out, paired)[0].status == "ok"  # same mode: map added
    assert (out / "c1_probabilities.nii.gz").exists()
