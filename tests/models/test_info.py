"""``cascadeseg info`` on model names and recipes: overrides checked, padded size shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascadeseg.cli import main
from cascadeseg.commands.info import padded_size
from cascadeseg.models import build_model


def test_info_accepts_a_recipe_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "two_stage_cpu", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "recipe: two_stage_cpu" in out and "model: two_stage" in out
    assert "'base_width': 8" in out  # the recipe's model.args
    assert "input: 48x48x48, computed at 48x48x48" in out  # the recipe's crop


def test_info_recipe_overrides_and_plain_model_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "info",
            "unet3d_cpu",
            "base_width=4",
            "model.args.norm_groups=2",
            "data.patch_size=[20,20,20]",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "'base_width': 4" in out and "'norm_groups': 2" in out
    assert "input: 20x20x20, computed at " in out


def test_info_accepts_a_recipe_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("model:\n  name: unet3d\n  args: {base_width: 4, depth: 2, norm_groups: 2}\n")
    assert main(["info", str(recipe), "--input-size", "10", "10", "10", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert (
        "input: 10x10x10, computed at 12x12x12 (the model pads each side to a multiple of 4)" in out
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["two_stage_cpu", "optim.lr=nan"], "optim.lr must be a finite positive number, got nan"),
        (["two_stage_cpu", "base_width=0"], "model.args.base_width must be a positive integer"),
        (["two_stage_cpu", "model.args.widths=3"], "has no argument(s) widths"),
        (["two_stage_cpu", "base_width"], "is not of the form key=value"),
        (["two_stage", "base_width=0"], "base_width must be a positive integer, got 0"),
        (["two_stage", "dropout=nan"], "dropout must be finite"),
        (["two_stage", "norm_groups=3"], "rejects norm_groups=3"),
        (["unet3d", "--input-size", "0", "16", "16"], "--input-size 0 16 16: sizes must be"),
        (["unet3d", "--input-size", "16", "16"], "the model is 3D"),
        (["no_such_thing"], "no recipe file or shipped recipe of that name"),
    ],
)
def test_info_bad_input_is_one_line_with_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_padded_size_follows_the_models_multiple() -> None:
    model = build_model("unet3d", base_width=4, depth=3, norm_groups=2)
    assert padded_size(model, [50, 48, 33]) == ([56, 48, 40], 8)
