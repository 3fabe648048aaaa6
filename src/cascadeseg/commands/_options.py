"""Options several subcommands take: each flag's type, default, choices and metavar defined once.

The help text stays each command's own (it says what the option means there), so every helper
takes it as an argument. ``parser`` may be an :class:`argparse.ArgumentParser` or an argument
group of one.
"""

from __future__ import annotations

import argparse

#: What takes options: a parser or one of its argument groups (argparse's common base class).
Options = argparse._ActionsContainer


def add_workers(parser: Options, *, default: int, help: str) -> None:
    """``--workers N``: processes that work in parallel."""
    parser.add_argument("--workers", type=int, default=default, help=help)


def add_no_progress(parser: Options, help: str = "no progress bar") -> None:
    """``--no-progress``: no progress bars."""
    parser.add_argument("--no-progress", action="store_true", help=help)


def add_dataset_layout(parser: Options, help: str) -> None:
    """``--layout``: a dataset layout by name (``files``, the layout of loose files, is none)."""
    # Loaded here, not at the top: the layouts load nibabel and scipy (about 0.1 s), which the
    # --help of the commands without this option does not need.
    from cascadeseg.data.layouts import LAYOUTS

    parser.add_argument(
        "--layout",
        choices=[name for name in LAYOUTS if name != "files"],
        default=None,
        help=help,
    )


def add_label_convention(parser: Options, flag: str, help: str) -> None:
    """``flag CONV``: a label convention by name."""
    from cascadeseg.data.labels import CONVENTIONS  # loaded here: see add_dataset_layout

    parser.add_argument(flag, choices=sorted(CONVENTIONS), default=None, metavar="CONV", help=help)


def add_synth_scale(parser: Options, help: str) -> None:
    """``--scale``: grid scale of synthetic cases (1: the BraTS grid at 1 mm)."""
    parser.add_argument("--scale", type=float, default=1.0, help=help)


def add_multifocal_prob(parser: Options, help: str) -> None:
    """``--multifocal-prob P``: share of multi-focal synthetic cases."""
    parser.add_argument("--multifocal-prob", type=float, default=0.0, metavar="P", help=help)
