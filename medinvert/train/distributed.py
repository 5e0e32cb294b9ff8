"""`torch.distributed` set-up for training and batch reconstruction under ``torchrun``.

``torchrun --nproc_per_node=N -m medinvert ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
without them everything runs as a single process (rank 0 of 1) and no process group is created.
Backend: ``nccl`` when the device is CUDA, ``gloo`` on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "shutdown_distributed"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its device, and whether a group exists."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    active: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the process group when launched by torchrun; otherwise a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda")
    torch_device = torch.device(f"cuda:{local_rank}" if use_cuda and world_size > 1 else device)
    if world_size > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(torch_device)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank, torch_device, active=world_size > 1)


def shutdown_distributed(context: DistContext) -> None:
    """Leave the process group (after a final barrier) if one was joined."""
    if context.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
