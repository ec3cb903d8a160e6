"""Process-group set-up from the launcher's environment: gloo on CPU, NCCL on CUDA, none alone.

Nothing here reads command-line flags: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and
``MASTER_ADDR``/``MASTER_PORT``) come from torchrun, or from SLURM's ``SLURM_PROCID``,
``SLURM_NTASKS`` and ``SLURM_LOCALID`` when ``srun`` started the processes (:mod:`.launch`), so
one program runs unchanged on one CPU process, N CPU processes, one GPU or N GPUs on M nodes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ..devices import pick_device
from .launch import resolve_launch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Read torchrun's (or srun's) variables and start the process group when the world has > 1 process."""
    launch = resolve_launch()
    world, rank, local_rank = launch.world_size, launch.rank, launch.local_rank
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistEnv(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    logger.info("rank %d/%d (local %d) on %s with %s, launched by %s", rank, world, local_rank, dev, backend,
                launch.launcher)
    return DistEnv(rank, world, local_rank, dev, backend)


def cleanup(env: DistEnv) -> None:
    """Tear the process group down (safe to call twice)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_object(obj):
    """Every rank's ``obj`` as a list (``[obj]`` alone)."""
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0 (no gradient)."""
    if not is_dist():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper; any other as it is."""
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


__all__ = ["DistEnv", "all_gather_object", "all_gather_tensor", "barrier", "cleanup",
           "init_distributed", "is_dist", "pick_device", "unwrap"]
