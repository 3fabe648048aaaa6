"""Atomic writes: whole files with ordinary permissions, nothing left behind on failure."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cascadeseg.fsutil import atomic_path, write_json_atomic, write_text_atomic


def test_written_file_has_umask_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        path = write_text_atomic("hello", tmp_path / "sub" / "a.txt")
    finally:
        os.umask(mask)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_json_round_trip(tmp_path: Path) -> None:
    path = write_json_atomic({"a": [1, 2]}, tmp_path / "x.json")
    assert json.loads(path.read_text()) == {"a": [1, 2]}


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = write_text_atomic("old", tmp_path / "a.txt")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
