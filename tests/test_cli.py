"""The command-line front door."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cascadeseg import __version__, cli


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: cascadeseg " + name in capsys.readouterr().out


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser([name])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_option_has_help_and_shows_its_default(name: str) -> None:
    parser = _subparser(name)
    text = parser.format_help()
    flat = " ".join(text.split())
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        flag = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{name} {flag}: no help line"
        if not action.option_strings:
            continue
        default = action.default
        if default not in (None, False, argparse.SUPPRESS):
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            assert f"default: {shown}" in flat or "default" in action.help, (
                f"{name} {flag}: default {default!r} not shown"
            )
        if action.choices is not None:
            assert all(str(c) in flat for c in action.choices), f"{name} {flag}: choices hidden"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FileNotFoundError(2, "No such file or directory", "/data/x.nii.gz"), "/data/x.nii.gz"),
        (PermissionError(13, "Permission denied", "/ro/out"), "/ro/out: Permission denied"),
        (IsADirectoryError(21, "Is a directory", "/data"), "/data: Is a directory"),
        (NotADirectoryError(20, "Not a directory", "/f/x"), "/f/x: Not a directory"),
        (OSError(28, "No space left on device", "/out/a", None, "/out/b"), "/out/a -> /out/b"),
    ],
)
def test_os_errors_are_one_line_with_exit_2(
    error: OSError,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cascadeseg.commands import compare

    def fail(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(compare, "run", fail)
    assert cli.main(["compare", "a", "b", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_internal_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from cascadeseg.commands import compare

    def fail(args: argparse.Namespace) -> int:
        raise KeyError("bug")

    monkeypatch.setattr(compare, "run", fail)
    with pytest.raises(KeyError):
        cli.main(["compare", "a", "b", "--out", "x"])


def test_missing_recipe_file_and_data_folder_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(
            [
                "train",
                str(tmp_path / "nope.yaml"),
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    assert "nope.yaml" in capsys.readouterr().err


def test_readme_states_the_safety_rules_and_exit_codes() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    safety = readme.split("## Safety", 1)[1].split("\n## ", 1)[0]
    for phrase in ("--overwrite", ".cascadeseg.lock", "atomically", "headers", "weights_only"):
        assert phrase in safety
    for code in ("| 0 |", "| 1 |", "| 2 |"):
        assert code in safety
