"""The demo refuses bad arguments before it makes any data."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascadeseg.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--minutes", "-1"], "--minutes must be a positive number"),
        (["--minutes", "nan"], "--minutes must be a positive number"),
        (["--scale", "0"], "--scale must be a positive number"),
        (["--workers", "-2"], "--workers must be >= 0"),
        (["--cases", "2"], "--cases must leave at least 2 training cases"),
        (["optim.lr=nan"], "optim.lr must be a finite positive number, got nan"),
        (["model.args.base_width=0"], "model.args.base_width must be a positive integer"),
    ],
)
def test_demo_bad_arguments_stop_before_any_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
