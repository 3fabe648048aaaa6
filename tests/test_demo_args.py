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
        (
            ["--model", "cunet", "--missing", "t1ce"],
            "--missing: the model cunet has no missing-sequence recipe (cunet_missing_cpu); "
            "use --model two_stage",
        ),
        (["--missing", "t1c"], "--missing: unknown sequence 't1c'"),
        (["--missing", "flair,t1,t1ce,t2"], "all four sequences missing"),
    ],
)
def test_demo_bad_arguments_stop_before_any_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("exit_code", [0, 1])
def test_demo_exit_code_is_the_evaluations(
    exit_code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cascadeseg.demo as demo
    from cascadeseg import cli

    def fake_run_demo(out: Path, **_: object) -> demo.DemoResult:
        summary = {"exit_code": exit_code, "status": "ok" if exit_code == 0 else "incomplete"}
        return demo.DemoResult(Path(out), Path(out), Path(out), Path(out) / "r.html", summary, 1.0)

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == exit_code
