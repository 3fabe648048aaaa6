"""Adding a network touches one file: this test file defines, registers, trains and runs one.

The network below is written here alone (no recipe, no change to the package): it has the
contract's attributes (:class:`cascadeseg.models.SegmentationNetwork`), registers itself with
``@register``, and the registry, the loss (by its ``output_kind``), the trainer and the
predictor take it from there. It is unregistered after each test, so the other tests see the
built-in networks only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cascadeseg.config import Config, LossConfig, apply_overrides
from cascadeseg.data.case import Case
from cascadeseg.data.writers import write_case
from cascadeseg.errors import ModelError
from cascadeseg.inference import PredictOptions, load_models, predict_case
from cascadeseg.losses import TwoStageLoss, build_loss
from cascadeseg.models import (
    SegmentationModule,
    SegmentationNetwork,
    available_models,
    build_model,
    network_spec,
    register,
    unregister,
)
from cascadeseg.training.logs import read_steps_csv
from cascadeseg.training.trainer import train
from toy import make_tiny_case

NAME = "tiny_test_net"


class TinyTestNet(nn.Module):
    """Two 3x3x3 convolutions: ``(B, in_channels, X, Y, Z) -> (B, 3, X, Y, Z)`` region logits."""

    spatial_dims = 3
    output_kind = "regions"
    size_multiple = 1  # no down-sampling: any input size

    def __init__(self, *, in_channels: int = 4, width: int = 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(width, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture
def tiny_test_net() -> Iterator[type[TinyTestNet]]:
    """:class:`TinyTestNet` registered as ``tiny_test_net`` for one test."""
    assert NAME not in available_models()
    registered = register(NAME)(TinyTestNet)
    try:
        yield registered
    finally:
        unregister(NAME)
    assert NAME not in available_models()


def test_the_registry_builds_and_describes_it(tiny_test_net: type[TinyTestNet]) -> None:
    spec = network_spec(NAME)
    assert (spec.network, spec.spatial_dims, spec.output_kind) == (tiny_test_net, 3, "regions")
    assert spec.in_channels == 4 and spec.defaults == {"in_channels": 4, "width": 4}
    model = build_model(NAME, width=2)
    assert isinstance(model, TinyTestNet) and isinstance(model, SegmentationModule)
    assert isinstance(model, SegmentationNetwork)
    assert model.model_args == {"in_channels": 4, "width": 2}
    assert isinstance(build_loss(model, LossConfig()), TwoStageLoss)


def test_unregistered_names_are_unknown(tiny_test_net: type[TinyTestNet]) -> None:
    unregister(NAME)
    with pytest.raises(ModelError, match="unknown model"):
        build_model(NAME)
    register(NAME)(tiny_test_net)  # for the fixture's clean-up


def _write_data(root: Path) -> Path:
    for i in range(3):
        case = make_tiny_case((24, 24, 16), seed=i, case_id=f"toy_{i:03d}", with_et=True)
        write_case(case, root, "brats2021")
    return root


def _config() -> Config:
    return apply_overrides(
        Config(),
        [
            f"model.name={NAME}",
            "model.args={width: 2}",
            "data.patch_size=[16,16,16]",
            "data.num_workers=0",
            "data.folds=3",
            "train.epochs=1",
            "train.iters_per_epoch=2",
            "train.batch_size=1",
            "train.precision=fp32",
            "train.snapshots=1",
            "train.tensorboard=false",
            "optim.warmup_epochs=0",
        ],
    )


def test_it_trains_and_predicts(
    tiny_test_net: type[TinyTestNet], tmp_path: Path, tiny_case: Case
) -> None:
    data = _write_data(tmp_path / "data")
    run = tmp_path / "run"
    assert train(_config(), data, run, progress=False) == run
    losses = [r["loss"] for r in read_steps_csv(run / "steps.csv")]
    assert len(losses) == 2 and all(np.isfinite(losses))

    members = load_models([run], "cpu")
    assert members and all(m.name == NAME for m in members)
    assert isinstance(members[0].network, tiny_test_net) and members[0].in_channels == 4
    options = PredictOptions(progress=False, device="cpu", tta=False, precision="fp32")
    prediction = predict_case(tiny_case, members, options)
    assert prediction.label.shape == tiny_case.image.shape[1:]
    assert prediction.probabilities.shape == (3, *tiny_case.image.shape[1:])
