"""torchrun + DDP on CPU (gloo): 2 processes x batch 1 take the step of 1 process x batch 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_trainer import tiny_config

from cascadeseg.config import Config, save_config
from cascadeseg.data.writers import write_case
from cascadeseg.errors import ConfigError
from cascadeseg.models.checkpoint import load_checkpoint
from cascadeseg.training.distributed import env_world, resolve_device
from cascadeseg.training.trainer import train
from toy import make_tiny_case


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(batch: int) -> Config:
    """The tiny U-Net of :func:`tiny_config` (GroupNorm, no dropout: per-sample computations, so
    the split batch is exactly comparable), one step of plain SGD (no momentum, no decay, a
    constant rate, which has no warm-up): the update is lr * gradient, so equal parameters mean
    equal gradients."""
    return tiny_config(
        "train.epochs=1",
        "train.iters_per_epoch=1",
        f"train.batch_size={batch}",
        "train.val_every=0",
        "train.snapshots=0",
        "optim.name=sgd",
        "optim.momentum=0",
        "optim.weight_decay=0",
        "optim.schedule=constant",
        "optim.lr=0.5",
    )


def test_env_world_defaults_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert env_world() == (0, 0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert env_world() == (3, 1, 4)
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        env_world()


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="expected auto, cpu or cuda"):
        resolve_device("tpu")


def test_two_processes_match_one_process_on_the_combined_batch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(4):
        write_case(make_tiny_case((32, 32, 32), seed=i, case_id=f"toy_{i:03d}"), data, "brats2021")

    single = train(_config(batch=2), data, tmp_path / "single", progress=False)

    recipe = tmp_path / "ddp.yaml"
    save_config(_config(batch=1), recipe)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "cascadeseg",
        "train",
        str(recipe),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "ddp"),
        "--no-progress",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    # Rank 0 alone prints the run directory.
    assert done.stdout.count(str(tmp_path / "ddp")) == 1

    init = torch.manual_seed(0)  # noqa: F841 - only the trained weights are compared below
    a = load_checkpoint(single / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    from cascadeseg.models import build_model

    torch.manual_seed(0)
    start = build_model("unet3d", base_width=4, depth=2, norm_groups=2).state_dict()
    moved = max((a[k] - start[k]).abs().max().item() for k in a if a[k].is_floating_point())
    diff = max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())
    assert moved > 1e-3  # the step changed the weights...
    assert diff < 1e-5  # ...identically in both runs
