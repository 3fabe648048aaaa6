"""Training with sequence dropout: the input channels, a short run, what the checkpoint says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_trainer import tiny_config, write_toy_dataset

from cascadeseg.data import datasets
from cascadeseg.data.missing import without_sequences
from cascadeseg.errors import ConfigError
from cascadeseg.inference import load_models
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.predictor import predict_case
from cascadeseg.training.build import build_training_model
from cascadeseg.training.logs import read_steps_csv
from cascadeseg.training.trainer import train
from toy import make_tiny_case

TINY_TWO_STAGE = "{base_width: 4, blocks: [1, 1], norm_groups: 2, dropout: 0.0}"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "data", shape=(24, 24, 24))


def test_in_channels_grow_with_the_mask_fill_only() -> None:
    dropout = "data.sequence_dropout=0.5"
    assert build_training_model(tiny_config(dropout)).in_channels == 8
    assert build_training_model(tiny_config(dropout, "data.missing_fill=zero")).in_channels == 4
    assert build_training_model(tiny_config("data.missing_fill=mask")).in_channels == 4
    two_d = ("model.name=unet2d", "model.args={base_width: 4, depth: 1}", "data.slice_context=1")
    assert build_training_model(tiny_config(*two_d, dropout)).in_channels == 16
    cunet = ("model.name=cunet", "model.args={base_width: 4}", dropout)
    with pytest.raises(ConfigError, match=r"data\.missing_fill=zero"):
        build_training_model(tiny_config(*cunet))
    assert build_training_model(tiny_config(*cunet, "data.missing_fill=zero")).in_channels == 4


@pytest.mark.parametrize(
    ("name", "args", "monitor"),
    [("two_stage", TINY_TWO_STAGE, "dice"), ("unet3d", None, "objective")],
)
def test_two_steps_with_dropout_then_predict_a_case_without_t1ce(
    toy_data: Path, tmp_path: Path, name: str, args: str | None, monitor: str
) -> None:
    model = [f"model.name={name}", f"model.args={args}"] if args else []
    cfg = tiny_config(
        *model,
        "data.sequence_dropout=1.0",
        "train.epochs=1",
        "train.iters_per_epoch=2",
        "train.batch_size=1",
        f"train.monitor={monitor}",
    )
    run = train(cfg, toy_data, tmp_path / "run", progress=False)
    losses = [r["loss"] for r in read_steps_csv(run / "steps.csv")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    (member,) = load_models([run], "cpu")
    assert (member.missing_fill, member.in_channels) == ("mask", 8)
    case = without_sequences(make_tiny_case((24, 24, 16)), ["t1ce"])
    options = PredictOptions(progress=False, device="cpu", tta=False, precision="fp32")
    prediction = predict_case(case, [member], options)
    assert prediction.label.shape == case.image.shape[1:]
    assert prediction.info["missing_sequences"] == ["t1ce"]
    assert prediction.info["missing_fill"] == ["mask"]


@pytest.mark.parametrize(
    ("window", "dropped", "line"),
    [
        (("data.sequence_dropout_start=0.5",), [False, True], "sequence dropout starts (epoch 2)"),
        (("data.sequence_dropout_end=0.5",), [True, False], "sequence dropout stops (epoch 2)"),
    ],
)
def test_dropout_runs_inside_its_window_of_the_run(
    toy_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    window: tuple[str, ...],
    dropped: list[bool],
    line: str,
) -> None:
    """Of 2 epochs, ``start=0.5``: epoch 1 complete, epoch 2 dropped; ``end=0.5``: the reverse."""
    seen: list[tuple[int, bool]] = []
    drop = datasets._drop_sequences

    def spy(dropout: Any, rng: Any, image: Any, key: Any) -> Any:
        out = drop(dropout, rng, image, key)
        seen.append((int(key[0]), bool(out[4:].min() == 0)))  # epoch, a sequence lost
        return out

    monkeypatch.setattr(datasets, "_drop_sequences", spy)
    cfg = tiny_config(
        "data.sequence_dropout=1.0",
        *window,
        "train.epochs=2",
        "train.iters_per_epoch=2",
        "train.batch_size=1",
    )
    run = train(cfg, toy_data, tmp_path / "run", progress=False)
    assert sorted(seen) == [(0, dropped[0])] * 2 + [(1, dropped[1])] * 2
    said = [m for m in capsys.readouterr().err.splitlines() if m.startswith("sequence dropout")]
    assert said == [line]  # the one change, not the state the run starts in
    (member,) = load_models([run], "cpu")
    assert member.missing_fill == "mask"
