"""Early, smaller crops (``data.early_patch_size``): the config's rules, the keys, a short run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_trainer import tiny_config, write_toy_dataset

from cascadeseg.config import early_crop_size
from cascadeseg.data import datasets
from cascadeseg.data.preprocess import preprocess_case
from cascadeseg.errors import ConfigError
from cascadeseg.training.data import TrainingSampler
from cascadeseg.training.logs import crop_line
from cascadeseg.training.trainer import train
from toy import make_tiny_case


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("data.early_patch_size=[8,8,8]",), r"needs data\.early_patch_end in \(0, 1\)"),
        (("data.early_patch_end=0.5",), r"data\.early_patch_end=0\.5 needs data\.early_patch_size"),
        (
            ("data.early_patch_size=[8,8]", "data.early_patch_end=0.5"),
            r"a list of 3 positive integers or null",
        ),
        (("data.early_patch_size=[8,8,8]", "data.early_patch_end=1"), r"\[0, 1\)"),
    ],
)
def test_early_crops_need_a_size_a_share_and_no_side_above_the_patch(
    overrides: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(*overrides)  # overrides are checked as they are applied


def test_early_sides_above_the_patch_are_cut_to_it() -> None:
    """A recipe with early crops takes a smaller ``data.patch_size`` as it is."""
    early = ("data.early_patch_end=0.5",)
    assert early_crop_size(tiny_config("data.early_patch_size=[8,32,8]", *early).data) == (
        8,
        16,
        8,
    )
    assert early_crop_size(tiny_config("data.early_patch_size=[32,16,16]", *early).data) is None
    assert early_crop_size(tiny_config().data) is None
    assert crop_line(tiny_config("data.early_patch_size=[16,20,16]", *early)) == ""


def test_early_crops_are_refused_for_2d_models(tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "data", shape=(24, 24, 16))
    cfg = tiny_config(
        "model.name=unet2d",
        "model.args={base_width: 4, depth: 1}",
        "data.early_patch_size=[8,8,8]",
        "data.early_patch_end=0.5",
    )
    with pytest.raises(ConfigError, match=r"early, smaller crops are for 3D crops"):
        train(cfg, data, tmp_path / "run", progress=False)


@pytest.mark.parametrize(
    ("dropout_on", "early", "flags"),
    [(True, False, ()), (False, False, (0,)), (True, True, (1, 1)), (False, True, (0, 1))],
)
def test_sampler_keys_say_early_after_the_dropout_flag(
    dropout_on: bool, early: bool, flags: tuple[int, ...]
) -> None:
    sampler = TrainingSampler(5, 3, seed=0)
    sampler.set_epoch(2, dropout_on=dropout_on, early=early)
    keys = list(sampler)
    assert len(keys) == 3
    assert all(key[0] == 2 and tuple(key[2:]) == flags for key in keys)


def test_a_key_marked_early_gets_the_early_size_from_the_same_draws() -> None:
    case = preprocess_case(make_tiny_case((24, 24, 16)))
    dataset = datasets.CropDataset3D(
        [case], patch_size=(16, 16, 16), early_patch_size=(8, 8, 8), augment=False
    )
    assert dataset[(0, 0)]["image"].shape[1:] == (16, 16, 16)
    assert dataset[(0, 0, 1)]["image"].shape[1:] == (16, 16, 16)  # the dropout flag alone
    assert dataset[(0, 0, 1, 1)]["image"].shape[1:] == (8, 8, 8)
    # Without an early size the flag changes nothing.
    plain = datasets.CropDataset3D([case], patch_size=(16, 16, 16), augment=False)
    np.testing.assert_array_equal(plain[(0, 0, 1, 1)]["image"], plain[(0, 0)]["image"])


def test_a_run_crops_small_over_its_first_share_then_at_the_patch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Of 2 epochs, ``early_patch_end=0.5``: epoch 1 on 16^3 crops, epoch 2 on 24^3."""
    data = write_toy_dataset(tmp_path / "data", shape=(24, 24, 24))
    seen: list[tuple[int, tuple[int, ...]]] = []
    to_item = datasets._to_item

    def spy(image: Any, label: Any, mask: Any, index: int, soft: Any) -> Any:
        seen.append((-1, tuple(image.shape[1:])))
        return to_item(image, label, mask, index, soft)

    monkeypatch.setattr(datasets, "_to_item", spy)
    cfg = tiny_config(
        "data.patch_size=[24,24,24]",
        "data.early_patch_size=[16,16,16]",
        "data.early_patch_end=0.5",
        "train.epochs=2",
        "train.iters_per_epoch=2",
        "train.batch_size=1",
    )
    train(cfg, data, tmp_path / "run", progress=False)
    assert [size for _, size in seen] == [(16, 16, 16)] * 2 + [(24, 24, 24)] * 2
    err = capsys.readouterr().err.splitlines()
    assert "crops: 16x16x16 over the first 50% of the run, then 24x24x24" in err
    assert [m for m in err if m.startswith("crops of")] == ["crops of 24x24x24 from epoch 2"]


def test_no_crop_line_without_early_crops() -> None:
    assert crop_line(tiny_config()) == ""
