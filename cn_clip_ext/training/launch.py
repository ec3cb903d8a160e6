"""Who launched this process: torchrun, SLURM's ``srun`` (one task per GPU), or nobody.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. A
process started by ``srun`` without torchrun has SLURM's variables instead: ``SLURM_PROCID`` (the
global rank), ``SLURM_NTASKS`` (the world size) and ``SLURM_LOCALID`` (the rank on its node).
Their rendezvous is ``MASTER_ADDR``/``MASTER_PORT`` when set, else the first host of
``SLURM_JOB_NODELIST`` (expanded by ``scontrol show hostnames``) and a port derived from the job
id, so every task of one job computes the same address and two jobs sharing a node do not
collide. :func:`resolve_launch` writes the torchrun names into the environment, so
``torch.distributed``'s ``env://`` rendezvous and everything downstream see one layout.

torchrun's variables win when both are present (``srun torchrun ...``, one task per node).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping, MutableMapping

from ..errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_PORT_BASE = 20000
"""SLURM runs without ``MASTER_PORT`` use ``DEFAULT_PORT_BASE + SLURM_JOB_ID % 20000``."""


@dataclass(frozen=True)
class Launch:
    """The process layout read from the environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"  # "torchrun", "slurm" or "single"
    master_addr: str | None = None
    master_port: int | None = None


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name, "")
    if raw == "":
        if default is None:
            raise UserError(f"environment variable {name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def slurm_first_host(nodelist: str) -> str | None:
    """The first host of a SLURM node list (``node[01-04]``), via ``scontrol show hostnames``;
    ``None`` when ``scontrol`` is missing or fails."""
    exe = shutil.which("scontrol")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30,
                             check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def read_launch(env: Mapping[str, str] | None = None) -> Launch:
    """The layout in ``env`` (default ``os.environ``); a multi-task SLURM step with no usable
    rendezvous is a one-line :class:`UserError`."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE", "") != "" or env.get("RANK", "") != "":
        world = _int(env, "WORLD_SIZE", 1)
        port = env.get("MASTER_PORT")
        return Launch(_int(env, "RANK", 0), world, _int(env, "LOCAL_RANK", 0), "torchrun",
                      env.get("MASTER_ADDR"), int(port) if port and port.isdigit() else None)
    if env.get("SLURM_NTASKS", "") == "" or env.get("SLURM_PROCID", "") == "":
        return Launch()
    world, rank = _int(env, "SLURM_NTASKS"), _int(env, "SLURM_PROCID")
    local = _int(env, "SLURM_LOCALID", 0)
    if world <= 1:
        return Launch(0, 1, 0, "slurm")
    if not 0 <= rank < world:
        raise UserError(f"SLURM_PROCID={rank} is outside 0..{world - 1} (SLURM_NTASKS={world})")
    addr = env.get("MASTER_ADDR") or None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    if addr is None and nodelist:
        addr = slurm_first_host(nodelist)
    if addr is None:
        raise UserError(f"SLURM_NTASKS={world} but no rendezvous for the {world} tasks: set MASTER_ADDR "
                        "(and MASTER_PORT), or run where 'scontrol show hostnames $SLURM_JOB_NODELIST' works")
    if env.get("MASTER_PORT"):
        port = _int(env, "MASTER_PORT")
    else:
        port = DEFAULT_PORT_BASE + _int(env, "SLURM_JOB_ID", 0) % 20000
    return Launch(rank, world, local, "slurm", addr, port)


def resolve_launch(env: MutableMapping[str, str] | None = None) -> Launch:
    """:func:`read_launch`, then export the layout under torchrun's names (``RANK`` ...) for a
    SLURM launch, so ``init_process_group("env://")`` finds its peers."""
    env = os.environ if env is None else env
    launch = read_launch(env)
    if launch.launcher == "slurm" and launch.world_size > 1:
        env.update(RANK=str(launch.rank), WORLD_SIZE=str(launch.world_size), LOCAL_RANK=str(launch.local_rank),
                   MASTER_ADDR=str(launch.master_addr), MASTER_PORT=str(launch.master_port))
        logger.debug("SLURM task %d of %d (local %d): rendezvous %s:%s", launch.rank, launch.world_size,
                     launch.local_rank, launch.master_addr, launch.master_port)
    return launch


__all__ = ["DEFAULT_PORT_BASE", "Launch", "read_launch", "resolve_launch", "slurm_first_host"]
