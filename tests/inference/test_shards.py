"""predict over several processes: --part i/n for job arrays, torchrun ranks, per-share locks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_predictor import member
from test_snapshot_ensemble import write_checkpoint

from cascadeseg import cli
from cascadeseg.data.writers import write_case
from cascadeseg.errors import ConfigError, InputError
from cascadeseg.fsutil import LOCK_NAME
from cascadeseg.inference.options import PredictOptions
from cascadeseg.inference.predictor import predict
from cascadeseg.inference.shards import Share, parse_part, share_from_env
from toy import make_tiny_case

QUIET = PredictOptions(progress=False, device="cpu", tta=False, precision="fp32")


def _dataset(root: Path, n: int) -> Path:
    for i in range(n):
        write_case(make_tiny_case(seed=i, case_id=f"BraTS2021_{i:05d}"), root, "brats2021")
    return root


def test_parse_part_one_based_and_validated() -> None:
    assert parse_part("1/2") == (0, 2)
    assert parse_part(" 4 / 4 ") == (3, 4)
    for bad in ("0/2", "3/2", "1/0", "a/b", "2", "-1/2", "1/2/3"):
        with pytest.raises(ConfigError, match="--part"):
            parse_part(bad)


def test_shares_are_round_robin_over_sorted_ids_and_cover_every_case_once() -> None:
    ids = [f"c{i:02d}" for i in (7, 3, 9, 0, 4, 1, 8, 2, 6, 5, 10)]
    assert Share(0, 2).select(ids, str) == ["c00", "c04", "c08", "c02", "c06", "c10"]
    assert Share(1, 3).select(sorted(ids), str) == ["c01", "c04", "c07", "c10"]
    for parts in (1, 2, 3, 5, 12):
        for world in (1, 2, 3):
            seen = [
                x
                for p in range(parts)
                for r in range(world)
                for x in Share(p, parts, r, world).select(ids, str)
            ]
            assert sorted(seen) == sorted(ids)  # the union, each exactly once
    assert Share(0, 2, 1, 2).tag == "part-1-of-2.rank-1-of-2"
    with pytest.raises(ConfigError):
        Share(rank=2, world_size=2)


def test_share_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert share_from_env("2/4") == Share(1, 4, 1, 3)
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        share_from_env(None)


def test_parts_give_the_union_of_cases_exactly_once(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", 3)
    out = tmp_path / "out"
    m = member()
    lines: list[str] = []
    first = predict([m], data, out, QUIET, share=Share(0, 2), echo=lines.append)
    second = predict([m], data, out, QUIET, share=Share(1, 2), echo=lines.append)
    assert [r.case_id for r in first] == ["BraTS2021_00000", "BraTS2021_00002"]
    assert [r.case_id for r in second] == ["BraTS2021_00001"]
    assert all(r.status == "ok" for r in first + second)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [
        f"BraTS2021_0000{i}.nii.gz" for i in range(3)
    ]
    assert "part-1-of-2: 2 of 3 case(s)" in lines
    assert not list(out.glob(f"{LOCK_NAME}*"))  # every share's lock is gone
    # A whole run afterwards finds everything done.
    again = predict([m], data, out, QUIET)
    assert {r.status for r in again} == {"skipped"}


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A live process of this host (its pid makes a lock look held)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.2)
    yield proc.pid
    proc.kill()
    proc.wait()


def _fake_lock(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "pid": pid,
        "host": socket.gethostname(),
        "started": "now",
        "started_unix": time.time(),
        "command": "cascadeseg predict --part 2/2",
    }
    path.write_text(json.dumps(record))


def test_shares_do_not_block_each_other_but_block_a_whole_run(
    tmp_path: Path, live_pid: int
) -> None:
    data = _dataset(tmp_path / "data", 2)
    out = tmp_path / "out"
    m = member()
    # Part 2/2 is running (its lock held by a live process): part 1/2 still runs...
    _fake_lock(out / f"{LOCK_NAME}.part-2-of-2", live_pid)
    results = predict([m], data, out, QUIET, share=Share(0, 2))
    assert [r.status for r in results] == ["ok"]
    # ...a second run of part 2/2 does not, nor does a whole run into the folder.
    with pytest.raises(InputError, match="another cascadeseg run"):
        predict([m], data, out, QUIET, share=Share(1, 2))
    with pytest.raises(InputError, match="a share of another cascadeseg run"):
        predict([m], data, out, replace(QUIET, overwrite=True))
    # A whole run holding the folder stops every share.
    (out / f"{LOCK_NAME}.part-2-of-2").unlink()
    _fake_lock(out / LOCK_NAME, live_pid)
    with pytest.raises(InputError, match="whole folder"):
        predict([m], data, out, QUIET, share=Share(1, 2))


def test_cli_part_and_bad_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _dataset(tmp_path / "data", 3)
    ckpt = write_checkpoint(tmp_path / "m.pt", 0)
    argv = ["predict", "--model", str(ckpt), "--input", str(data), "--output"]
    argv += [str(tmp_path / "out"), "--no-tta", "--no-progress", "--device", "cpu"]
    assert cli.main([*argv, "--part", "0/2"]) == 2
    assert "--part 0/2" in capsys.readouterr().err
    assert cli.main([*argv, "--part", "2/2"]) == 0
    assert [p.name for p in (tmp_path / "out").glob("*.nii.gz")] == ["BraTS2021_00001.nii.gz"]


def test_torchrun_two_cpu_ranks_split_the_cases(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", 3)
    ckpt = write_checkpoint(tmp_path / "m.pt", 0)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += [f"--master_port={port}", "-m", "cascadeseg", "predict", "--model", str(ckpt)]
    cmd += ["--input", str(data), "--output", str(out), "--no-tta", "--no-progress"]
    cmd += ["--device", "cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [
        f"BraTS2021_0000{i}.nii.gz" for i in range(3)
    ]
    # Each rank predicted its own share; rank 0 alone printed the merged summary.
    assert "rank-0-of-2: 2 of 3 case(s)" in done.stdout
    assert "rank-1-of-2: 1 of 3 case(s)" in done.stdout
    assert done.stdout.count("3 case(s): 3 written") == 1
    assert not list(out.glob(f"{LOCK_NAME}*"))


def test_cpu_threads_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from cascadeseg.inference.shards import cpu_threads_per_rank

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cpu_threads_per_rank() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert cpu_threads_per_rank() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert cpu_threads_per_rank() == 16
