"""Safe writing: atomic files, and one writer per output folder.

Every writer of the package (NIfTI images, JSON, checkpoints, cache entries) goes through
:func:`atomic_path`: the content is written to a temporary file in the destination folder and
renamed into place with :func:`os.replace`, which is atomic on POSIX and Windows. ``mkstemp``
creates files readable by the owner only, so the permissions are set to what a plain ``open``
would have given (``0o666`` minus the umask) before the rename.

Every command that writes a folder holds :func:`output_lock` on it: a second run into the same
folder fails at once instead of mixing its files with the first run's, a lock left by a killed
run is taken over, and the temporary files a killed run left are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cascadeseg.errors import InputError


def _default_mode() -> int:
    # os.umask can only be read by setting it; restore it at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Args:
        path: the destination file. Its folder is created when missing.
        suffix: ending of the temporary name (e.g. ``.nii.gz`` for writers that choose the
            format from the name).

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json_atomic(data: Any, path: str | os.PathLike[str], *, indent: int = 2) -> Path:
    """Write ``data`` as JSON (UTF-8, trailing newline) atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n", encoding="utf-8")
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` (UTF-8) atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# --------------------------------------------------------------------------------------------
# one writer per output folder

#: Name of the lock file a command holds in the folder it writes (see :func:`output_lock`).
LOCK_NAME = ".cascadeseg.lock"

#: Temporary names made by :func:`atomic_path`: ``.<name>.<8 mkstemp characters>.tmp<suffix>``.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp.*$")

# Folders this process holds a lock on (realpath -> nesting depth): a command that calls another
# API function writing the same folder (the demo calling predict) must not lock itself out.
_HELD: dict[str, int] = {}


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and make sure files can be written in it.

    Raises:
        InputError: ``folder`` (or a parent) is a file, cannot be created, or is not writable;
            one line naming the path.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: is a file, not a folder; give a folder to write into")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{folder}: a parent of this folder is a file") from None
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the folder ({exc.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: folder is not writable")
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def holder_text(holder: dict[str, Any]) -> str:
    """One line naming a lock's holder: pid, host, start time and command."""
    command = holder.get("command") or "?"
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
        f"{holder.get('started', '?')}: {command}"
    )


def _process_start_time(pid: int) -> float | None:
    """Unix time at which process ``pid`` started (Linux ``/proc``), or None where unknown."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        # Field 22 (start time in clock ticks after boot) counts from after the ")" of the name.
        ticks = int(stat_line.rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _is_stale(holder: dict[str, Any]) -> bool:
    """A lock of a process of this host that no longer runs (or an unreadable, empty lock).

    A live process with the holder's pid that started after the lock was taken is another
    process that got the number again (after a reboot, say): the lock is stale then too.
    """
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True  # a lock killed between create and write, or garbage
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process: cannot tell
    if not _pid_alive(pid):
        return True
    taken, began = holder.get("started_unix"), _process_start_time(pid)
    return isinstance(taken, (int, float)) and began is not None and began > taken + 2.0


def _create_lock(path: Path, record: dict[str, Any]) -> bool:
    """Create the lock file atomically (``O_CREAT | O_EXCL``); False when it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    return True


def _take_over_stale(path: Path, holder: dict[str, Any]) -> bool:
    """Move a stale lock aside; False when another process changed it meanwhile."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return False  # another process took it over first; try again
    taken = _read_lock(aside) == holder
    if not taken:
        # It changed between reading and moving: the live lock of a faster process. Put it back
        # unless a third one created a new lock meanwhile (link fails then).
        with contextlib.suppress(OSError):
            os.link(aside, path)
    with contextlib.suppress(OSError):
        aside.unlink()
    return taken


@contextlib.contextmanager
def output_lock(
    folder: str | os.PathLike[str],
    command: str | None = None,
    *,
    echo: Callable[[str], None] = print,
    clean_temp: bool = True,
    name: str = LOCK_NAME,
) -> Iterator[Path]:
    """Hold the exclusive right to write into ``folder`` (created when missing).

    The lock is ``<folder>/.cascadeseg.lock``, created atomically, holding the pid, host, start
    time and command line of the holder; it is removed on exit. A second run into the same
    folder fails at once; a lock left by a process of this host that no longer runs (killed) is
    taken over with a note. Nested use in one process (an API function called by a command that
    already holds the folder) is allowed. On first acquisition, temporary files that
    :func:`atomic_path` left behind in an interrupted run are removed
    (:func:`remove_stale_temp_files`).

    Args:
        folder: the output folder.
        command: the command line shown to a second run (default: this process's argv).
        echo: where notes go (stale lock taken over, temporary files removed).
        clean_temp: remove stale temporary files under the folder.
        name: the lock file's name; several processes that each write their own share of one
            folder (``predict --part``, torchrun ranks) hold one name each
            (``.cascadeseg.lock.part-1-of-4``), with ``clean_temp=False``.

    Yields:
        The folder.

    Raises:
        InputError: the folder is a file or not writable, or another live run holds it (the
            message names that run's pid and command).
    """
    created = not Path(folder).exists()
    folder = check_output_folder(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    path = folder / name
    started = time.time()
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "started_unix": started,
        "command": command if command is not None else " ".join(["cascadeseg", *sys.argv[1:]]),
    }
    _acquire(path, record, echo)
    _HELD[key] = 1
    try:
        if clean_temp:
            removed = remove_stale_temp_files(folder, older_than=started)
            if removed:
                echo(
                    f"note: removed {removed} temporary file(s) left by an interrupted run "
                    f"in {folder}"
                )
        yield folder
    finally:
        del _HELD[key]
        if _read_lock(path).get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()
        if created:  # a command that stopped before writing leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()


def live_holder(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of the live run holding lock file ``path``, or ``None`` (no lock, or stale)."""
    path = Path(path)
    if not path.exists():
        return None
    holder = _settled_record(path)
    return None if _is_stale(holder) else holder


def _settled_record(path: Path) -> dict[str, Any]:
    """The lock file's record, read again once if it was created but not yet written."""
    holder = _read_lock(path)
    if not holder and path.exists():
        time.sleep(0.05)  # created but not yet written by its holder
        holder = _read_lock(path)
    return holder


def lock_held_error(folder: Path, who: str, holder: dict[str, Any], path: Path) -> InputError:
    """The one-line refusal of a run whose output folder ``who`` holds (lock file ``path``)."""
    return InputError(
        f"{folder}: {who} ({holder_text(holder)}); wait for it to finish, or remove {path} if "
        "it is gone"
    )


def _acquire(path: Path, record: dict[str, Any], echo: Callable[[str], None]) -> None:
    for _ in range(5):
        try:
            if _create_lock(path, record):
                return
        except OSError as exc:
            raise InputError(f"{path.parent}: cannot create a lock file ({exc.strerror})") from None
        holder = _settled_record(path)
        if holder and not _is_stale(holder):
            raise lock_held_error(
                path.parent, "another cascadeseg run writes into this folder", holder, path
            )
        if _take_over_stale(path, holder):
            echo(
                f"note: {path.parent}: took over the lock of a run that no longer runs "
                f"({holder_text(holder)})"
            )
    raise InputError(f"{path}: could not take the lock (other runs keep taking it)")


def remove_stale_temp_files(
    folder: str | os.PathLike[str], *, older_than: float, max_depth: int = 2
) -> int:
    """Remove temporary files of :func:`atomic_path` under ``folder`` older than ``older_than``.

    Only names of the ``.<name>.<random>.tmp<suffix>`` pattern are touched, only plain files (no
    links), and only those last modified before ``older_than`` (a Unix time: the start of the
    run holding the folder's lock, so files a live writer is making are left alone). Sub-folders
    are searched ``max_depth`` levels deep (a run folder's ``checkpoints/``); hidden ones and the
    preprocessing cache are not.

    Returns:
        How many files were removed.
    """
    removed = 0
    root = Path(folder)
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = [] if depth >= max_depth else [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not _TEMP_NAME.match(name):
                continue
            path = Path(dirpath, name)
            try:
                info = path.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_mtime < older_than:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
    return removed
