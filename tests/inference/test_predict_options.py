"""One source of truth for inference settings: flag > recipe stored with the model > default;
``--precision auto`` is the default."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_snapshot_ensemble import TinyConv, write_checkpoint
from tiny_members import tiny_member

from cascadeseg import cli
from cascadeseg.data.writers import write_case
from cascadeseg.errors import ConfigError
from cascadeseg.inference.loading import LoadedModel, recipe_inference_values
from cascadeseg.inference.options import PredictOptions, options_from_recipe
from cascadeseg.runtime import native_bf16
from toy import make_tiny_case

NONE_GIVEN: dict[str, Any] = {
    "tta": None,
    "sliding_window": None,
    "overlap": None,
    "precision": None,
    "threshold": None,
}
STORED = {
    "tta": False,
    "sliding_window": "always",
    "overlap": 0.25,
    "precision": "fp32",
    "threshold": 0.4,
    "tc_threshold_without_et": 0.25,
    "tta_region": "tumour",
    "tta_region_threshold": 0.1,
    "tta_region_margin": 8,
    "et_min_voxels": 3,  # not one of the resolved keys (its own rule: tune-postprocess)
}


def member(config: dict[str, Any], source: str = "m.pt") -> LoadedModel:
    return tiny_member(TinyConv(0), source=source, config=config)


def test_precision_auto_is_the_default() -> None:
    assert PredictOptions().precision == "auto"
    assert PredictOptions().ensemble_mode == "paired"


def test_recipe_values_used_when_no_flag_given() -> None:
    models = [member({"inference": STORED}, "a.pt"), member({"inference": {"tta": True}}, "b.pt")]
    values, where = recipe_inference_values(models)
    assert where == "a.pt" and "et_min_voxels" not in values  # the first recipe decides
    options = options_from_recipe(models, NONE_GIVEN, device="cpu")
    assert (options.tta, options.sliding_window, options.overlap) == (False, "always", 0.25)
    assert (options.precision, options.threshold) == ("fp32", 0.4)
    assert (options.tta_region, options.tta_region_threshold, options.tta_region_margin) == (
        "tumour",
        0.1,
        8,
    )
    assert set(options.settings_origin.values()) == {"recipe"}


def test_flag_overrides_recipe_and_default_fills_the_rest() -> None:
    models = [member({"inference": {"tta": False, "precision": "fp32"}})]
    given = {**NONE_GIVEN, "tta": True, "threshold": 0.6}
    options = options_from_recipe(models, given, device="cpu", overwrite=True)
    assert options.tta is True and options.threshold == 0.6  # flags
    assert options.precision == "fp32"  # recipe
    assert (options.sliding_window, options.overlap) == ("auto", 0.5)  # built-in defaults
    assert options.overwrite is True  # other fields pass through
    assert dict(options.settings_origin) == {
        "tta": "option",
        "sliding_window": "default",
        "overlap": "default",
        "precision": "recipe",
        "threshold": "option",
        "tc_threshold_without_et": "default",
        "tta_region": "default",
        "tta_region_threshold": "default",
        "tta_region_margin": "default",
    }
    assert options.tc_threshold_without_et is None  # off unless a recipe or flag sets it
    # No recipe at all (an ONNX export): defaults, precision auto.
    bare = options_from_recipe([member({})], NONE_GIVEN)
    assert bare.precision == "auto" and bare.tta is True
    assert set(bare.settings_origin.values()) == {"default"}


def test_bad_stored_value_names_the_checkpoint() -> None:
    models = [member({"inference": {"overlap": 1.5}}, "run/checkpoints/best.pt")]
    with pytest.raises(ConfigError, match=r"run/checkpoints/best.pt.*inference.overlap"):
        options_from_recipe(models, NONE_GIVEN)
    # ... unless a flag replaces it.
    assert options_from_recipe(models, {**NONE_GIVEN, "overlap": 0.5}).overlap == 0.5


def test_cli_reads_the_recipe_and_flags_override(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_case(make_tiny_case(seed=0, case_id="BraTS2021_00000"), data, "brats2021")
    ckpt = write_checkpoint(
        tmp_path / "m.pt", 0, ("inference.tta=false", "inference.threshold=0.45")
    )
    base = ["predict", "--model", str(ckpt), "--input", str(data), "--no-progress"]
    base += ["--device", "cpu"]

    def settings(out: Path, *flags: str) -> dict[str, Any]:
        assert cli.main([*base, "--output", str(out), *flags]) == 0
        return json.loads((out / "BraTS2021_00000.json").read_text())["settings"]  # type: ignore[no-any-return]

    stored = settings(tmp_path / "a")
    assert stored["tta"] is False and stored["passes"] == 1 and stored["threshold"] == 0.45
    assert stored["settings_origin"]["tta"] == "recipe"
    # precision: the recipe default is auto -> bf16 where native, else fp32
    assert stored["precision_requested"] == "auto"
    assert stored["precision"] == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    assert stored["tc_threshold_without_et"] is None and stored["tc_threshold"] == 0.45
    flagged = settings(tmp_path / "b", "--tta", "--threshold", "0.3", "--precision", "fp32")
    assert flagged["tta"] is True and flagged["passes"] == 8 and flagged["threshold"] == 0.3
    assert flagged["precision"] == "fp32"
    assert flagged["settings_origin"]["tta"] == "option"
    assert replace(PredictOptions(), tta=False).tta is False


def test_onnx_backend_reports_fp32() -> None:
    from types import SimpleNamespace

    import numpy as np

    from cascadeseg.inference.predictor import predict_preprocessed

    pre: Any = SimpleNamespace(
        image=np.zeros((4, 8, 8, 8), np.float32), brain_mask=np.ones((8, 8, 8), bool)
    )
    for requested in ("auto", "bf16"):
        options = PredictOptions(
            backend="onnx", precision=requested, device="cpu", sliding_window="never", tta=False
        )
        _, _, info = predict_preprocessed(pre, [member({})], options)
        assert info["precision"] == "fp32"
        assert ("onnx" in info["precision_note"]) == (
            requested == "bf16" and native_bf16(torch.device("cpu"))
        )


def test_compile_option_compiles_each_network_once(
    tiny_case: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cascadeseg.inference import predictor

    compiled: list[object] = []

    class Compiled(torch.nn.Module):
        """Like torch.compile's module: runs the network, and ``bool()`` raises (``__len__``)."""

        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.network(x)

        def __len__(self) -> int:
            raise TypeError("does not support len()")

    def fake_compile(network: torch.nn.Module) -> torch.nn.Module:
        compiled.append(network)
        return Compiled(network)

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = member({})
    options = PredictOptions(progress=False, device="cpu", tta=True, compile=True, precision="fp32")
    eager = predictor.predict_case(tiny_case, [model], replace(options, compile=False))
    first = predictor.predict_case(tiny_case, [model], options)
    predictor.predict_case(tiny_case, [model], options)
    assert compiled == [model.network]  # compiled once, kept for later cases
    assert np.array_equal(first.label, eager.label)
    assert "--compile" in " ".join(
        a for action in _predict_parser()._actions for a in action.option_strings
    )


def _predict_parser() -> Any:
    import argparse

    from cascadeseg.commands import predict as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser


#: Each InferenceConfig field: a recipe value, the flag that overrides it and the flag's value.
RECIPE_FIELDS = [
    ("tta", "false", False, ["--tta"], True),
    ("threshold", "0.4", 0.4, ["--threshold", "0.6"], 0.6),
    ("sliding_window", "always", "always", ["--sliding-window", "never"], "never"),
    ("overlap", "0.25", 0.25, ["--overlap", "0.75"], 0.75),
    ("precision", "bf16", "bf16", ["--precision", "fp32"], "fp32"),
    ("et_min_voxels", "7", 7, ["--et-min-voxels", "3"], 3),
    ("tta_region", "tumour", "tumour", ["--tta-region", "volume"], "volume"),
    ("tta_region_margin", "8", 8, ["--tta-margin", "4"], 4),
    ("tta_region_threshold", "0.1", 0.1, ["--tta-region-threshold", "0.2"], 0.2),
    ("tc_threshold_without_et", "0.3", 0.3, ["--tc-threshold-without-et", "0.4"], 0.4),
    ("tc_threshold_without_et", "0.3", 0.3, ["--tc-threshold-without-et", "off"], None),
]


def test_every_inference_config_field_is_covered() -> None:
    from dataclasses import fields

    from cascadeseg.config import InferenceConfig

    assert {f.name for f in fields(InferenceConfig)} == {row[0] for row in RECIPE_FIELDS}


@pytest.mark.parametrize(("key", "text", "stored", "flag", "flagged"), RECIPE_FIELDS)
def test_recipe_field_reaches_predict_and_its_flag_overrides(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    text: str,
    stored: Any,
    flag: list[str],
    flagged: Any,
) -> None:
    import cascadeseg.inference as inference
    from cascadeseg.inference.options import resolve_et_min_voxels

    ckpt = write_checkpoint(tmp_path / "m.pt", 0, (f"inference.{key}={text}",))
    calls: list[tuple[list[LoadedModel], PredictOptions]] = []

    def record(models: list[LoadedModel], _inputs: Any, _out: Any, options: Any, **_: Any) -> list:
        calls.append((models, options))  # what predict was asked to do; nothing is predicted
        return []

    monkeypatch.setattr(inference, "predict", record)
    base = ["predict", "--model", str(ckpt), "--input", str(tmp_path), "--device", "cpu"]
    for extra in ([], flag):
        assert cli.main([*base, "--output", str(tmp_path / "out"), *extra]) == 0
    (models, from_recipe), (_, from_flag) = calls

    def value(options: PredictOptions) -> tuple[Any, str]:
        if key == "et_min_voxels":  # a stored threshold (with tune-postprocess's), not a field
            return resolve_et_min_voxels(options, models)
        return getattr(options, key), options.settings_origin[key]

    assert value(from_recipe) == (stored, "recipe" if key != "et_min_voxels" else "stored")
    assert value(from_flag) == (flagged, "option")


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_tc_threshold_without_et_outside_0_1_is_a_usage_error(tmp_path: Path, value: str) -> None:
    ckpt = write_checkpoint(tmp_path / "m.pt", 0, ())
    args = ["predict", "--model", str(ckpt), "--input", str(tmp_path), "--output"]
    args += [str(tmp_path / "out"), "--device", "cpu", "--tc-threshold-without-et", value]
    assert cli.main(args) == 2


def test_tc_threshold_without_et_not_a_number_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", "--model", "m", "--input", "i", "--output", "o",
                  "--tc-threshold-without-et", "low"])  # fmt: skip
    assert exc.value.code == 2
