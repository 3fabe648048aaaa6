"""Splitting one ``predict`` run over processes and machines.

Two ways, which combine:

* **torchrun** (``torchrun --nproc_per_node=N -m cascadeseg predict ...``, multi-node with
  ``--nnodes``/``--rdzv-endpoint``): every rank predicts its share of the cases, on
  ``cuda:LOCAL_RANK`` on a GPU machine or with ``cores / LOCAL_WORLD_SIZE`` threads on a CPU one.
  The ranks join a ``gloo`` process group (:mod:`torch.distributed`; only the per-case results,
  a few hundred bytes each, travel through it); at the end every rank waits for the others,
  rank 0 prints the summary of all cases, and every rank exits with the status of the whole run.
* **``--part i/n``** (job arrays, e.g. SLURM ``--array=1-n`` with ``--part
  ${SLURM_ARRAY_TASK_ID}/n``): the process predicts only the ``i``-th of ``n`` shares, ``i``
  counted from 1; each part prints the summary of its own cases. Under torchrun the ranks split
  the part further.

The shares are dealt round-robin over the case ids in sorted order (share ``k`` gets the cases
at positions ``k, k + n, k + 2n, ...``), so they are the same in every process whatever order
the file system lists the cases in, and their sizes differ by at most one case. Every case is
checked (inputs, output names) by every process before any inference, so a bad input stops
all shares alike.

Locks: a whole run holds ``<output>/.cascadeseg.lock``; a share holds a lock of its own,
``.cascadeseg.lock.part-1-of-4`` (``.rank-0-of-2`` under torchrun), so shares writing into one
folder never stop each other, while a second run of the same share, or a whole run beside
running shares (and the other way round), stops at once with exit 2. Shares leave the
temporary files of interrupted runs in place (another share may be writing them); the next
whole run removes them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cascadeseg.errors import ConfigError
from cascadeseg.fsutil import (
    LOCK_NAME,
    check_output_folder,
    live_holder,
    lock_held_error,
    output_lock,
)

T = TypeVar("T")

#: How long a rank waits for the others at the end (their shares may take hours longer when
#: this rank's cases were all skipped); a rank that dies makes torchrun stop the others sooner.
WAIT = timedelta(days=7)


@dataclass(frozen=True)
class Share:
    """Which cases this process predicts.

    Attributes:
        part: 0-based index of the ``--part`` (0 without ``--part``).
        parts: number of parts (1 without ``--part``).
        rank: torchrun rank (0 without torchrun).
        world_size: torchrun processes (1 without torchrun).
    """

    part: int = 0
    parts: int = 1
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.part < self.parts:
            raise ConfigError(f"part index {self.part} outside 0..{self.parts - 1}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"RANK={self.rank} outside 0..WORLD_SIZE-1={self.world_size - 1}")

    @property
    def whole(self) -> bool:
        """True when this process predicts every case (no part, one process)."""
        return self.parts == 1 and self.world_size == 1

    @property
    def tag(self) -> str:
        """``part-1-of-4``, ``rank-0-of-2`` or both (names the share's lock file)."""
        tags = []
        if self.parts > 1:
            tags.append(f"part-{self.part + 1}-of-{self.parts}")
        if self.world_size > 1:
            tags.append(f"rank-{self.rank}-of-{self.world_size}")
        return ".".join(tags)

    def select(self, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """This share's items, in their given order (round-robin over the sorted keys)."""
        ordered = sorted(range(len(items)), key=lambda i: key(items[i]))
        mine = ordered[self.part :: self.parts][self.rank :: self.world_size]
        return [items[i] for i in sorted(mine)]


def parse_part(text: str) -> tuple[int, int]:
    """``"i/n"`` (``i`` from 1 to ``n``) -> ``(i - 1, n)``.

    Raises:
        ConfigError: not two whole numbers ``i/n`` with ``1 <= i <= n``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise ConfigError(f"--part {text!r}: expected i/n, e.g. 1/4 (i counts from 1)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--part {text}: i must be in 1..n (n >= 1), e.g. 1/{max(count, 1)}")
    return index - 1, count


def env_int(name: str, default: int) -> int:
    """An integer environment variable (torchrun's ``RANK``, ``WORLD_SIZE``, ...)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def share_from_env(part: str | None = None) -> Share:
    """The :class:`Share` of this process: ``--part`` and torchrun's ``RANK``/``WORLD_SIZE``."""
    index, count = parse_part(part) if part is not None else (0, 1)
    return Share(index, count, env_int("RANK", 0), env_int("WORLD_SIZE", 1))


def join_ranks(share: Share) -> bool:
    """Join a ``gloo`` process group when torchrun started several ranks; True when joined here.

    Raises:
        ConfigError: ``WORLD_SIZE`` > 1 without torchrun's rendezvous variables.
    """
    if share.world_size == 1 or dist.is_initialized():
        return False
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise ConfigError(
            f"WORLD_SIZE={share.world_size} without MASTER_ADDR/MASTER_PORT: start the ranks "
            "with torchrun, or give each process its own --part i/n"
        )
    dist.init_process_group(backend="gloo", timeout=WAIT)
    return True


def leave_ranks(joined: bool) -> None:
    """Leave the process group :func:`join_ranks` joined."""
    if joined and dist.is_initialized():
        dist.destroy_process_group()


def cpu_threads_per_rank() -> int:
    """CPU threads for one of ``LOCAL_WORLD_SIZE`` ranks on this machine (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, env_int("LOCAL_WORLD_SIZE", 1)))


def setup_rank_device(share: Share, device: torch.device) -> None:
    """Per-rank CPU threads when several ranks share a CPU machine (CUDA: one GPU per rank,
    chosen by :func:`cascadeseg.runtime.resolve_device` from ``LOCAL_RANK``)."""
    if share.world_size > 1 and device.type == "cpu":
        torch.set_num_threads(cpu_threads_per_rank())


def gather(items: list[Any], share: Share) -> list[Any]:
    """Every rank's ``items``, concatenated in rank order, on every rank (waits for all)."""
    if share.world_size == 1 or not dist.is_initialized():
        return list(items)
    everything: list[Any] = [None] * share.world_size
    dist.all_gather_object(everything, items)
    return [item for part in everything for item in part]


def _share_locks(folder: Path) -> list[Path]:
    """Lock files of shares (``.cascadeseg.lock.<tag>``), not locks being taken over."""
    return [p for p in sorted(folder.glob(f"{LOCK_NAME}.*")) if ".stale-" not in p.name]


def check_no_live_shares(folder: Path) -> None:
    """Refuse a whole run into a folder that shares of another run are writing."""
    for path in _share_locks(folder):
        holder = live_holder(path)
        if holder is not None:
            raise lock_held_error(
                folder, "a share of another cascadeseg run writes into this folder", holder, path
            )


@contextlib.contextmanager
def folder_lock(
    folder: Path, share: Share, command: str, echo: Callable[[str], None]
) -> Iterator[Path]:
    """The lock a (share of a) run holds on its output folder (see the module docstring)."""
    if share.whole:
        with output_lock(folder, command, echo=echo) as held:
            check_no_live_shares(held)
            yield held
        return
    check_output_folder(folder)  # made here, so no share removes it as "its own, left empty"
    holder = live_holder(folder / LOCK_NAME)
    if holder is not None:
        raise lock_held_error(
            folder,
            "another cascadeseg run writes into this whole folder",
            holder,
            folder / LOCK_NAME,
        )
    name = f"{LOCK_NAME}.{share.tag}"
    with output_lock(folder, command, echo=echo, clean_temp=False, name=name) as held:
        yield held
