"""The command-line front door."""

from __future__ import annotations

import argparse
import importlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascadeseg import __version__, cli
from cascadeseg.data.writers import write_case
from cascadeseg.fsutil import LOCK_NAME
from toy import make_tiny_case


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


# --------------------------------------------------------------------------------------------
# one writer per output folder, one-line errors

#: A minimal command line of each command that writes a folder; ``OUT`` is that folder.
WRITERS = {
    "synth": ["synth", "OUT", "--cases", "1"],
    "train": ["train", "unet3d_cpu", "--data", "DATA", "--out", "OUT"],
    "evaluate": ["evaluate", "--pred", "DATA", "--ref", "DATA", "--out", "OUT"],
    "compare": ["compare", "DATA", "--out", "OUT"],
    "demo": ["demo", "--out", "OUT"],
    "predict": ["predict", "--model", "DATA", "--input", "DATA", "--output", "OUT"],
}


@pytest.fixture
def live_holder() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "30"])
    yield process
    process.kill()
    process.wait()


def test_every_folder_writer_is_locked() -> None:
    declared = {
        name
        for name, module in cli.COMMANDS.items()
        if getattr(importlib.import_module(f"cascadeseg.commands.{module}"), "OUTPUT_FOLDER", None)
    }
    # predict locks in its API function, after checking that no output is an input.
    assert declared == set(WRITERS) - {"predict"}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_second_run_into_a_locked_folder_fails_at_once(
    name: str,
    tmp_path: Path,
    live_holder: subprocess.Popen[bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, data = tmp_path / "out", tmp_path / "data"
    out.mkdir()
    data.mkdir()
    write_case(make_tiny_case(case_id="BraTS2021_00000"), data, "brats2021")
    holder = {"pid": live_holder.pid, "host": socket.gethostname(), "started": "t", "command": "X"}
    (out / LOCK_NAME).write_text(json.dumps(holder))
    argv = [{"OUT": str(out), "DATA": str(data)}.get(a, a) for a in WRITERS[name]]
    if name == "predict":
        argv[2] = str(_tiny_checkpoint(tmp_path / "m.pt"))
    start = time.perf_counter()
    assert cli.main(argv) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pid {live_holder.pid}" in err and ": X)" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def _tiny_checkpoint(path: Path) -> Path:
    from cascadeseg.config import Config, apply_overrides, to_dict
    from cascadeseg.models import build_model
    from cascadeseg.models.checkpoint import atomic_torch_save, make_checkpoint

    model = build_model("unet3d", base_width=4, depth=1, norm_groups=2)
    config = to_dict(apply_overrides(Config(), ["model.name=unet3d"]))
    state = model.state_dict()
    args = model.model_args
    ckpt = make_checkpoint(
        model_name="unet3d", model_args=args, model_state=state, config=config, epoch=1
    )
    atomic_torch_save(ckpt, path)
    return path


def test_lock_released_and_unused_new_folder_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new_out"
    argv = ["evaluate", "--pred", str(tmp_path / "missing"), "--ref", str(tmp_path)]
    assert cli.main([*argv, "--out", str(out)]) == 2
    assert not out.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_only_rank_0_locks_under_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = argparse.Namespace(_output_folder="out", out=tmp_path / "run")
    monkeypatch.setenv("RANK", "1")
    with cli._output_lock(args, ["train"]):
        assert not (tmp_path / "run").exists()
    monkeypatch.setenv("RANK", "0")
    with cli._output_lock(args, ["train"]):
        assert (tmp_path / "run" / LOCK_NAME).exists()


def test_os_errors_are_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascadeseg.commands import synth

    def denied(args: argparse.Namespace) -> int:
        raise PermissionError(13, "Permission denied", str(args.out / "case.nii.gz"))

    monkeypatch.setattr(synth, "run", denied)
    assert cli.main(["synth", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err == f"cascadeseg synth: error: {tmp_path / 'd' / 'case.nii.gz'}: Permission denied\n"


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
