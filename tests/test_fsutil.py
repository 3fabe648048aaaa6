"""Atomic writes: whole files with ordinary permissions, nothing left behind on failure."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from cascadeseg import fsutil
from cascadeseg.errors import InputError
from cascadeseg.fsutil import (
    LOCK_NAME,
    atomic_path,
    check_output_folder,
    output_lock,
    remove_stale_temp_files,
    write_json_atomic,
    write_text_atomic,
)


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


# --------------------------------------------------------------------------------------------
# output_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_file_records_holder_and_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    with output_lock(out, "cascadeseg predict --output out", echo=print) as folder:
        holder = json.loads((folder / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["command"] == "cascadeseg predict --output out" and holder["started"]
        with output_lock(out):  # nested use in the same process is allowed
            pass
        assert (folder / LOCK_NAME).exists()
    assert not (out / LOCK_NAME).exists()


def test_second_run_into_a_locked_folder_fails_at_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from cascadeseg.fsutil import output_lock\n"
            f"with output_lock({str(out)!r}, 'cascadeseg predict --model a'):\n"
            "    print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.perf_counter()
        with pytest.raises(InputError) as err, output_lock(out, "second"):
            pass
        assert time.perf_counter() - start < 1.0
        message = str(err.value)
        assert f"pid {holder.pid}" in message and "cascadeseg predict --model a" in message
        assert "\n" not in message and LOCK_NAME in message
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "x", "command": "old"}
    (out / LOCK_NAME).write_text(json.dumps(stale))
    notes: list[str] = []
    with output_lock(out, "new", echo=notes.append):
        assert json.loads((out / LOCK_NAME).read_text())["command"] == "new"
    assert len(notes) == 1 and "took over" in notes[0] and f"pid {stale['pid']}" in notes[0]
    assert sorted(p.name for p in out.iterdir()) == []


def test_lock_of_another_host_is_not_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    other = {"pid": _dead_pid(), "host": "elsewhere.invalid", "started": "x", "command": "c"}
    (out / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(InputError, match=r"elsewhere\.invalid"), output_lock(out):
        pass
    assert json.loads((out / LOCK_NAME).read_text()) == other


def test_output_folder_that_is_a_file_or_read_only(tmp_path: Path) -> None:
    afile = tmp_path / "f.nii.gz"
    afile.write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        check_output_folder(afile)
    with pytest.raises(InputError, match="parent"):
        check_output_folder(afile / "sub")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    with mock.patch("cascadeseg.fsutil.os.access", return_value=False):
        with pytest.raises(InputError, match="not writable") as err:
            check_output_folder(read_only)
    assert str(read_only) in str(err.value)


def test_stale_temp_files_are_removed_under_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    # What a killed atomic_path leaves: ".<name>.<8 characters>.tmp<suffix>", 0 bytes.
    left = [out / ".c1.nii.gz.ab_c9xyz.tmp.nii.gz", out / "checkpoints" / ".last.pt.k2j4h5g6.tmp"]
    kept = [out / "c1.nii.gz", out / ".hidden", out / "notes.tmp", out / ".a.tmp"]
    for path in left + kept:
        path.write_bytes(b"")
    old = time.time() - 60
    for path in left + kept:
        os.utime(path, (old, old))
    fresh = out / ".c2.nii.gz.zzzzzzzz.tmp.nii.gz"  # a live writer's file: newer than the run
    notes: list[str] = []
    with output_lock(out, echo=notes.append):
        fresh.write_bytes(b"")
        assert remove_stale_temp_files(out, older_than=time.time() - 30) == 0
    assert not any(p.exists() for p in left)
    assert all(p.exists() for p in [*kept, fresh])
    assert notes == [f"note: removed 2 temporary file(s) left by an interrupted run in {out}"]


def test_lock_whose_pid_now_belongs_to_a_younger_process_is_stale(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # The parent process is alive, but it started long after this lock was taken (in 2001).
    reused = {"pid": os.getppid(), "host": socket.gethostname(), "started_unix": 1e9}
    (out / LOCK_NAME).write_text(json.dumps(reused))
    if fsutil._process_start_time(os.getppid()) is None:
        pytest.skip("no /proc here to tell a process's start time")
    notes: list[str] = []
    with output_lock(out, "new", echo=notes.append):
        pass
    assert notes and "took over" in notes[0]
