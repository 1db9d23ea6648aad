"""Data parallelism under ``torchrun``: the same ``train()``, one process per device.

``torchrun --nproc-per-node N`` (or a multi-node launch) sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`setup` reads them, joins the process group (NCCL on CUDA, gloo on
CPU) and picks this process's device. Without them everything is a one-process no-op.
Only rank 0 writes files; the others compute and take part in the collectives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from herbid.inference.device import resolve_device

#: Process-group backends by device type.
BACKENDS: dict[str, str] = {"cuda": "nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    #: Whether this context created the process group (and so must destroy it).
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def env_world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment (1 process if unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, local, world


def setup(device_name: str) -> tuple[DistContext, torch.device]:
    """Join the process group if launched by torchrun; return the context and the device."""
    rank, local_rank, world = env_world()
    device = resolve_device(device_name, local_rank)
    if world <= 1:
        return DistContext(), device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(BACKENDS.get(device.type, "gloo"), rank=rank, world_size=world,
                                timeout=timedelta(minutes=30))
        owns = True
    return DistContext(dist.get_rank(), local_rank, dist.get_world_size(), owns), device


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
