"""Multi-process training through ``torchrun`` and DistributedDataParallel, nothing home-made.

``torchrun --nproc_per_node=N -m cascadeseg train CONFIG --data DIR --out RUN`` starts N processes
and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (plus ``MASTER_ADDR``/``MASTER_PORT``) in each;
multi-node runs add ``--nnodes``/``--rdzv-endpoint`` and work the same way. A plain
``cascadeseg train`` (no torchrun variables) is a single process and never touches
``torch.distributed``.

Conventions the trainer follows:

* one process per device: on CUDA, process ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK`` and the
  ``nccl`` backend; on CPU the ``gloo`` backend;
* every rank reads its own share of each epoch's samples (the trainer's sampler splits an epoch's
  index list ``rank::world_size``, as :class:`torch.utils.data.DistributedSampler` does);
* DDP averages gradients over ranks, so ``N`` processes with batch ``b`` take the same step as one
  process with batch ``N * b`` when the loss is a batch mean (tested);
* rank 0 alone writes files and shows progress bars; logged losses are all-reduced means.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cascadeseg.errors import ConfigError
from cascadeseg.runtime import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 when not distributed).
        local_rank: rank on this node (selects the CUDA device).
        world_size: number of processes (1 when not distributed).
        device: the device this process trains on.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment (``(0, 0, 1)`` without)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise ConfigError(f"bad torchrun environment (RANK/LOCAL_RANK/WORLD_SIZE): {exc}") from None
    return rank, local_rank, world_size


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group when started by torchrun; otherwise describe a single process.

    Args:
        device: ``auto``, ``cpu`` or ``cuda`` (see :func:`resolve_device`).
        timeout_minutes: collective-operation timeout (validation on rank 0 must fit in it).

    Returns:
        The :class:`DistInfo` of this process. The backend is ``nccl`` on CUDA, ``gloo`` on CPU.
    """
    rank, local_rank, world_size = env_world()
    dev = resolve_device(device, local_rank)
    if world_size > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            timeout = timedelta(minutes=timeout_minutes)
            if dev.type == "cuda":
                dist.init_process_group(backend="nccl", timeout=timeout, device_id=dev)
            else:
                dist.init_process_group(backend="gloo", timeout=timeout)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def wrap_model(
    model: nn.Module, info: DistInfo, *, find_unused_parameters: bool = False
) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, the model itself otherwise.

    ``find_unused_parameters``: some steps leave parameters without a gradient (a cascade
    training its stage 1 alone); DDP then looks for them after every backward pass.
    """
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and/or ``torch.compile`` wrappers (what checkpoints store)."""
    inner: Any = model
    while True:
        if isinstance(inner, nn.parallel.DistributedDataParallel):
            inner = inner.module
        elif hasattr(inner, "_orig_mod"):
            inner = inner._orig_mod
        else:
            return inner  # type: ignore[no-any-return]


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed and dist.is_initialized():
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise sum of ``values`` over ranks (returned as a new tensor; a copy when single)."""
    out = values.detach().clone().to(info.device)
    if info.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise mean of ``values`` over ranks."""
    return all_reduce_sum(values, info) / info.world_size


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's value of ``flag`` on every rank (e.g. the time-budget decision, taken once)."""
    if not info.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.broadcast(value, src=0)
    return bool(value.item() > 0.5)


def cleanup(info: DistInfo) -> None:
    """Barrier, then leave the process group (rank 0 has finished writing by then)."""
    if info.distributed and dist.is_initialized():
        barrier(info)
        dist.destroy_process_group()
