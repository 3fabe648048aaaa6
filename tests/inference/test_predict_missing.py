"""``predict`` on cases with missing sequences: models trained with sequence dropout take them,
the others keep their one-line error unless ``--substitute-missing`` fills them; ``--missing``
ignores a sequence of complete cases."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tiny_members import save_model_checkpoint, tiny_checkpoint, tiny_member

from cascadeseg import cli
from cascadeseg.data.missing import without_sequences
from cascadeseg.data.writers import write_case
from cascadeseg.errors import ConfigError, ModelError
from cascadeseg.inference import load_models
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.predictor import predict_case
from cascadeseg.models import build_model
from toy import make_tiny_case

TINY = {"base_width": 4, "depth": 1, "norm_groups": 2}


def _mask_checkpoint(path: Path, in_channels: int = 8) -> Path:
    """A tiny unet3d trained (as its recipe says) with sequence dropout and the mask fill."""
    torch.manual_seed(0)
    model = build_model("unet3d", **TINY, in_channels=in_channels)
    return save_model_checkpoint(path, "unet3d", model, overrides=("data.sequence_dropout=0.5",))


def _data(root: Path) -> Path:
    """Two brats2021 cases; ``BraTS2021_00001`` has no T1ce file."""
    for i in range(2):
        case = make_tiny_case((24, 24, 16), seed=i, case_id=f"BraTS2021_{i:05d}")
        write_case(case, root, "brats2021")
    (root / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz").unlink()
    return root


def _predict(model: Path, inputs: list[Path], out: Path, *extra: str) -> int:
    argv = ["predict", "--model", str(model), "--input", *map(str, inputs)]
    return cli.main([*argv, "--output", str(out), "--no-tta", "--no-progress", *extra])


def test_a_model_with_dropout_takes_a_case_without_t1ce(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (member,) = load_models([_mask_checkpoint(tmp_path / "mask.pt")], "cpu")
    assert (member.missing_fill, member.in_channels) == ("mask", 8)
    data, out = _data(tmp_path / "data"), tmp_path / "out"
    assert _predict(tmp_path / "mask.pt", [data], out) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("BraTS2021_00001") and "missing: t1ce" in line for line in lines)
    assert not any(line.startswith("BraTS2021_00000") and "missing" in line for line in lines)
    record = json.loads((out / "BraTS2021_00001.json").read_text())
    assert record["missing_sequences"] == ["t1ce"] and "t1ce" not in record["inputs"]
    assert json.loads((out / "BraTS2021_00000.json").read_text())["missing_sequences"] == []


def test_an_ordinary_model_keeps_the_missing_file_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_checkpoint(tmp_path / "plain.pt")
    (member,) = load_models([model], "cpu")
    assert member.missing_fill is None
    data, out = _data(tmp_path / "data"), tmp_path / "out"
    assert _predict(model, [data], out) == 1  # as today: the case fails, the others are written
    text = capsys.readouterr().out
    assert "failed: BraTS2021_00001:" in text and "missing t1ce file(s)" in text
    assert (out / "BraTS2021_00000.nii.gz").exists()
    assert not (out / "BraTS2021_00001.nii.gz").exists()
    # Three files: a usage error naming the count, as before.
    folder = data / "BraTS2021_00001"
    assert _predict(model, sorted(folder.glob("*_[ft]*.nii.gz")), tmp_path / "o3") == 2
    assert "got 3 file(s)" in capsys.readouterr().err


def test_three_named_files_for_a_model_with_dropout(tmp_path: Path) -> None:
    model = _mask_checkpoint(tmp_path / "mask.pt")
    folder = _data(tmp_path / "data") / "BraTS2021_00001"
    files = [folder / f"BraTS2021_00001_{m}.nii.gz" for m in ("t2", "flair", "t1")]
    assert _predict(model, files, tmp_path / "out") == 0
    record = json.loads((tmp_path / "out" / "BraTS2021_00001.json").read_text())
    assert record["missing_sequences"] == ["t1ce"]


def test_missing_option_ignores_a_sequence_of_complete_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _mask_checkpoint(tmp_path / "mask.pt")
    data, out = _data(tmp_path / "data"), tmp_path / "out"
    assert _predict(model, [data], out, "--missing", "flair", "--missing", "t2") == 0
    first = json.loads((out / "BraTS2021_00000.json").read_text())
    assert first["missing_sequences"] == ["flair", "t2"]
    assert set(first["inputs"]) == {"t1", "t1ce", "seg"}
    second = json.loads((out / "BraTS2021_00001.json").read_text())
    assert second["missing_sequences"] == ["flair", "t1ce", "t2"]
    assert "missing: flair, t2" in capsys.readouterr().out
    # An ordinary model: a usage error unless --substitute-missing says how to fill.
    plain = tiny_checkpoint(tmp_path / "plain.pt")
    assert _predict(plain, [data / "BraTS2021_00000"], tmp_path / "o2", "--missing", "t1") == 2
    assert "--substitute-missing sibling or zero" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    assert _predict(model, [data], tmp_path / "o3", "--missing", "t1c") == 2


def test_loading_checks_the_availability_channels(tmp_path: Path) -> None:
    bad = _mask_checkpoint(tmp_path / "bad.pt", in_channels=4)
    with pytest.raises(ModelError, match="4 availability channels"):
        load_models([bad], "cpu")


def test_onnx_exports_keep_the_fill(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = _mask_checkpoint(tmp_path / "mask.pt")
    assert cli.main(["export", "--model", str(model), "--out", str(tmp_path / "m.onnx")]) == 0
    (member,) = load_models([tmp_path / "m.onnx"], "cpu")
    assert (member.missing_fill, member.in_channels) == ("mask", 8)
    data = _data(tmp_path / "data")
    assert _predict(tmp_path / "m.onnx", [data / "BraTS2021_00001"], tmp_path / "out") == 0
    record = json.loads((tmp_path / "out" / "BraTS2021_00001.json").read_text())
    assert record["missing_sequences"] == ["t1ce"]


def test_maps_are_not_added_to_a_segmentation_made_with_other_sequences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _mask_checkpoint(tmp_path / "mask.pt")
    case = _data(tmp_path / "data") / "BraTS2021_00000"
    out = tmp_path / "out"
    assert _predict(model, [case], out) == 0
    assert _predict(model, [case], out, "--missing", "t2", "--save-probabilities") == 1
    assert "see --missing" in capsys.readouterr().out
    assert not (out / "BraTS2021_00000_probabilities.nii.gz").exists()


def test_a_2d_model_with_dropout_and_slice_context(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("unet2d", base_width=4, depth=1, in_channels=3 * 4 + 4)
    overrides = ("data.sequence_dropout=0.5", "data.slice_context=1")
    path = save_model_checkpoint(tmp_path / "u2.pt", "unet2d", model, overrides=overrides)
    (member,) = load_models([path], "cpu")
    assert (member.missing_fill, member.slice_context, member.in_channels) == ("mask", 1, 16)
    data = _data(tmp_path / "data")
    assert _predict(path, [data / "BraTS2021_00001"], tmp_path / "out") == 0
    record = json.loads((tmp_path / "out" / "BraTS2021_00001.json").read_text())
    assert record["missing_sequences"] == ["t1ce"]


def test_the_network_sees_constant_availability_channels_on_every_pass() -> None:
    seen: list[torch.Tensor] = []

    def network(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.full((x.shape[0], 3, *x.shape[2:]), 0.25)

    member = tiny_member(network, in_channels=8, missing_fill="mask")
    case = without_sequences(make_tiny_case((20, 22, 14)), ["t1ce"])
    options = PredictOptions(progress=False, device="cpu", tta=True, precision="fp32")
    predict_case(case, [member], options)
    assert seen and all(x.shape[1] == 8 for x in seen)
    for x in seen:  # padded, flipped: still 1, 1, 0, 1 everywhere
        flags = x[:, 4:].transpose(0, 1).reshape(4, -1)
        assert torch.equal(flags.amin(dim=1), torch.tensor([1.0, 1.0, 0.0, 1.0]))
        assert torch.equal(flags.amax(dim=1), torch.tensor([1.0, 1.0, 0.0, 1.0]))
        assert not x[:, 2].any()


@pytest.mark.parametrize(("how", "replaced_by"), [("sibling", "t1"), ("zero", "zero")])
def test_an_ordinary_model_with_substitute_missing(
    how: str, replaced_by: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_checkpoint(tmp_path / "plain.pt")
    data, out = _data(tmp_path / "data"), tmp_path / "out"
    assert _predict(model, [data], out, "--substitute-missing", how) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("BraTS2021_00001"))
    assert f"missing: t1ce (t1ce <- {replaced_by})" in line
    assert f"t1ce <- {replaced_by} in 1 case(s)" in text
    record = json.loads((out / "BraTS2021_00001.json").read_text())
    assert record["missing_sequences"] == ["t1ce"]
    assert record["substituted"] == {"t1ce": replaced_by}
    assert record["settings"]["substitute_missing"] == how
    complete = json.loads((out / "BraTS2021_00000.json").read_text())
    assert complete["substituted"] == {} and complete["missing_sequences"] == []
    # --missing on a complete case, and three named files, take the same path.
    folder = data / "BraTS2021_00000"
    argv = ["--missing", "flair", "--substitute-missing", how]
    assert _predict(model, [folder], tmp_path / "o2", *argv) == 0
    record = json.loads((tmp_path / "o2" / "BraTS2021_00000.json").read_text())
    assert record["substituted"] == {"flair": "t2" if how == "sibling" else "zero"}
    three = sorted((data / "BraTS2021_00001").glob("*_[ft]*.nii.gz"))
    assert _predict(model, three, tmp_path / "o3", "--substitute-missing", how) == 0


def test_the_network_sees_the_substitute() -> None:
    seen: list[torch.Tensor] = []

    def network(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.full((x.shape[0], 3, *x.shape[2:]), 0.25)

    member = tiny_member(network)
    case = without_sequences(make_tiny_case((20, 22, 14)), ["t1ce"])
    options = PredictOptions(progress=False, device="cpu", tta=False, precision="fp32")
    with pytest.raises(ConfigError, match="trained without sequence dropout"):
        predict_case(case, [member], options)
    sibling = dataclasses.replace(options, substitute_missing="sibling")
    prediction = predict_case(case, [member], sibling)
    assert prediction.info["substituted"] == {"t1ce": "t1"}
    assert torch.equal(seen[-1][:, 2], seen[-1][:, 1]) and seen[-1][:, 1].any()
    predict_case(case, [member], dataclasses.replace(options, substitute_missing="zero"))
    assert not seen[-1][:, 2].any() and seen[-1][:, 1].any()


def test_a_model_with_dropout_ignores_substitute_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _mask_checkpoint(tmp_path / "mask.pt")
    data = _data(tmp_path / "data")
    case = data / "BraTS2021_00001"
    assert _predict(model, [case], tmp_path / "out", "--substitute-missing", "sibling") == 0
    assert "--substitute-missing sibling ignored" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "BraTS2021_00001.json").read_text())
    assert record["substituted"] == {} and record["settings"]["substitute_missing"] is None


def test_maps_are_not_added_to_a_segmentation_made_with_another_substitute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_checkpoint(tmp_path / "plain.pt")
    case = _data(tmp_path / "data") / "BraTS2021_00001"
    out = tmp_path / "out"
    assert _predict(model, [case], out, "--substitute-missing", "sibling") == 0
    argv = ["--substitute-missing", "zero", "--save-probabilities"]
    assert _predict(model, [case], out, *argv) == 1
    assert "made with --substitute-missing sibling" in capsys.readouterr().out
    argv = ["--substitute-missing", "sibling", "--save-probabilities"]
    assert _predict(model, [case], out, *argv) == 0
    assert (out / "BraTS2021_00001_probabilities.nii.gz").exists()
