"""The ``cascadeseg`` command: a thin layer over the Python API.

Each subcommand lives in ``cascadeseg/commands/<name>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` that calls the API. The table below names them
explicitly; modules are imported only when their command runs (or for ``--help``), so the
command line starts fast.

A command that writes a folder names the argument holding it in ``OUTPUT_FOLDER`` (the
attribute of the parsed arguments, e.g. ``"out"``); :func:`main` then holds
:func:`cascadeseg.fsutil.output_lock` on that folder while the command runs, so a second run into
the same folder fails at once (exit 2). ``predict`` locks inside its API function instead, after
it has checked that no output is an input; under torchrun or with ``--part`` each share of its
cases takes a lock of its own (:mod:`cascadeseg.inference.shards`), so shares writing into one
folder do not stop each other.

Errors the user can fix (:class:`cascadeseg.errors.CascadesegError`, and :class:`OSError`: a
missing, unreadable or unwritable file) print one line naming the file and exit 2; failures of
some cases in a batch exit 1 with a summary; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from cascadeseg import __version__
from cascadeseg.errors import CascadesegError

#: subcommand -> module under ``cascadeseg.commands`` (explicit, no discovery).
COMMANDS: dict[str, str] = {
    "synth": "synth",
    "inspect": "inspect",
    "preprocess": "preprocess",
    "info": "info",
    "train": "train",
    "predict": "predict",
    "tune-postprocess": "tune_postprocess",
    "export": "export",
    "evaluate": "evaluate",
    "compare": "compare",
    "demo": "demo",
    "benchmark": "benchmark",
}


def _load(name: str):
    try:
        return importlib.import_module(f"cascadeseg.commands.{COMMANDS[name]}")
    except ModuleNotFoundError as exc:
        if exc.name == f"cascadeseg.commands.{COMMANDS[name]}":
            return None
        raise


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it has none (``None``, a flag's
    ``False``) or the help already says it; the choices of an option are listed too."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.choices is not None and action.metavar is not None and "choices" not in text:
            text += f" (choices: {', '.join(map(str, action.choices))})"
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or "default" in text
        ):
            return text
        if isinstance(default, (list, tuple)):
            return f"{text} (default: {' '.join(map(str, default))})"
        return f"{text} (default: {default})"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="cascadeseg",
        description="Brain tumour segmentation with cascaded U-Nets (BraTS-style multi-modal MRI).",
    )
    parser.add_argument("--version", action="version", version=f"cascadeseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name in COMMANDS:
        if chosen == name:
            module = _load(name)
            if module is None:
                sub.add_parser(name, help="(not available in this version)")
                continue
            p = sub.add_parser(
                name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter
            )
            module.add_arguments(p)
            p.set_defaults(_run=module.run, _output_folder=getattr(module, "OUTPUT_FOLDER", None))
        else:
            # Import lazily: the overview lists the commands without loading torch.
            sub.add_parser(name, help=_SHORT_HELP.get(name, ""), add_help=False)
    return parser


_SHORT_HELP = {
    "synth": "write synthetic BraTS-like cases built on the MNI152 template",
    "inspect": "list and validate the cases of a dataset folder",
    "preprocess": "preprocess a dataset into the cache used by training",
    "info": "parameter count and layer table of a model",
    "train": "train a model from a recipe",
    "predict": "segment cases with one or more trained models",
    "tune-postprocess": "choose the ET post-processing threshold on validation cases",
    "export": "export a trained model to ONNX",
    "evaluate": "BraTS metrics of predictions against references",
    "compare": "compare several evaluated methods side by side",
    "demo": "the whole pipeline on synthetic data, no download needed",
    "benchmark": "measure speed and memory of every pipeline stage",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an :class:`OSError`: the file(s) it names and the system's reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    if not names:
        return reason
    return f"{' -> '.join(names)}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cascadeseg`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if args.command is None:
        parser.print_help()
        return 0
    if run is None:
        print(f"cascadeseg: command {args.command!r} is not available", file=sys.stderr)
        return 2
    try:
        with _output_lock(args, argv):
            return int(run(args) or 0)
    except CascadesegError as exc:
        print(f"cascadeseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A file the user named or pointed at cannot be read or written (missing, no
        # permission, a folder where a file belongs, disk full): one line naming it. Other
        # exceptions are bugs and keep their traceback for the report.
        print(f"cascadeseg {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _output_lock(
    args: argparse.Namespace, argv: Sequence[str]
) -> contextlib.AbstractContextManager[Any]:
    """The lock on the output folder of a command that declares one (``OUTPUT_FOLDER``).

    Under torchrun only rank 0 holds it (the other ranks write nothing).
    """
    name = getattr(args, "_output_folder", None)
    folder = getattr(args, name, None) if name else None
    if folder is None or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    # Loaded only for a command that writes: fsutil (tempfile, socket) would double the import
    # time of `cascadeseg --help` (about 25 ms -> 75 ms measured).
    from cascadeseg.fsutil import output_lock

    return output_lock(folder, " ".join(["cascadeseg", *argv]))


if __name__ == "__main__":
    sys.exit(main())
