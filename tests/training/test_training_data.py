"""The trainer's data: 2D slices or 3D crops after the registered network's ``spatial_dims``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_trainer import tiny_config, write_toy_dataset
from torch import nn

from cascadeseg.config import Config
from cascadeseg.data.datasets import CropDataset3D, SliceDataset2D
from cascadeseg.data.writers import write_case
from cascadeseg.models import register, unregister
from cascadeseg.training.data import prepare_data
from cascadeseg.training.distributed import DistInfo
from cascadeseg.training.logs import read_steps_csv
from cascadeseg.training.trainer import train
from toy import make_tiny_case

TINY_2D = "test_tiny_2d_regions"


class Tiny2DRegions(nn.Module):
    """A one-convolution 2D network with region logits, unknown to any built-in list."""

    spatial_dims = 2
    output_kind = "regions"
    size_multiple = 1  # no down-sampling: any input size

    def __init__(self, *, in_channels: int = 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, 3, H, W)`` region logits."""
        return self.conv(x)


@pytest.fixture(scope="module")
def tiny_2d() -> Iterator[str]:
    """:class:`Tiny2DRegions` registered (``@register``) for this module's tests; the registry
    is restored afterwards, so other tests see the built-in networks only."""
    register(TINY_2D)(Tiny2DRegions)
    try:
        yield TINY_2D
    finally:
        unregister(TINY_2D)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


def tiny_2d_config(*extra: str) -> Config:
    return tiny_config(
        f"model.name={TINY_2D}",
        "model.args={}",
        "data.patch_size=[32,32]",
        "train.val_cases=1",
        *extra,
    )


def test_a_registered_2d_network_trains_on_slices(
    tiny_2d: str, toy_data: Path, tmp_path: Path
) -> None:
    cfg = tiny_2d_config()
    data = prepare_data(cfg, toy_data, DistInfo(), progress=False)
    assert isinstance(data.train_dataset, SliceDataset2D)
    assert data.train_dataset[(0, 0)]["image"].shape == (4, 32, 32)
    # And the whole loop runs with it: 2D batches forward, slice-by-slice validation.
    out = train(
        tiny_2d_config("train.epochs=1", "train.iters_per_epoch=2"),
        toy_data,
        tmp_path / "run",
        progress=False,
    )
    assert len(read_steps_csv(out / "steps.csv")) == 2


def test_a_3d_network_trains_on_crops(toy_data: Path) -> None:
    data = prepare_data(tiny_config(), toy_data, DistInfo(), progress=False)
    assert isinstance(data.train_dataset, CropDataset3D)
    assert data.train_dataset[(0, 0)]["image"].shape == (4, 16, 16, 16)


def test_a_split_stratified_by_kind_keeps_rare_kinds_in_training(tmp_path: Path) -> None:
    """6 cases, 2 without enhancing tumour, 2 folds: each fold validates exactly one of them,
    whatever the seed (unstratified, some seeds validate both)."""
    root = tmp_path / "data"
    for i in range(6):
        case = make_tiny_case((24, 24, 24), seed=i, case_id=f"k_{i:03d}", with_et=i < 4)
        write_case(case, root, "brats2021")
    rare = {"k_004", "k_005"}
    plain_rare_counts = set()
    for seed in range(4):
        for fold in range(2):
            common = ("data.folds=2", f"data.fold={fold}", f"seed={seed}", "train.val_cases=null")
            data = prepare_data(
                tiny_config(*common, "data.split_stratify=kind"), root, DistInfo(), progress=False
            )
            assert len(rare & set(data.split["val"])) == 1
            assert len(rare & set(data.split["train"])) == 1
            kinds = data.train_dataset.kinds  # type: ignore[attr-defined]
            assert kinds.count("non-enhancing") == 1
            plain = prepare_data(tiny_config(*common), root, DistInfo(), progress=False)
            plain_rare_counts.add(len(rare & set(plain.split["val"])))
    assert plain_rare_counts != {1}  # the unstratified deal does not guarantee it
