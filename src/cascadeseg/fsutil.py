"""Atomic file writes: a file appears whole, with ordinary permissions, or not at all.

Every writer of the package (NIfTI images, JSON, checkpoints, cache entries) goes through
:func:`atomic_path`: the content is written to a temporary file in the destination folder and
renamed into place with :func:`os.replace`, which is atomic on POSIX and Windows. ``mkstemp``
creates files readable by the owner only, so the permissions are set to what a plain ``open``
would have given (``0o666`` minus the umask) before the rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
