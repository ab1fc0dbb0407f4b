"""Where this process sits in a multi-process run, read from torchrun's environment.

torchrun (``python -m torch.distributed.run``) and ``bnlab train --nproc N`` start each
process with ``RANK`` (global index), ``LOCAL_RANK`` (index on this machine), ``WORLD_SIZE``
(number of processes in total), ``MASTER_ADDR`` and ``MASTER_PORT`` (the rendezvous address
of rank 0). Without them this is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist

__all__ = ["WorldInfo", "is_main_process", "world_info"]


@dataclass(frozen=True)
class WorldInfo:
    """``rank`` in ``[0, world_size)``, ``local_rank`` on this machine, rendezvous address."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


class DistributedSetupError(ValueError):
    """The environment or settings describe a process group that cannot be formed."""


def _env_int(name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise DistributedSetupError(
            f"environment variable {name}={text!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise DistributedSetupError(f"environment variable {name}={value} must be {bound}")
    return value


def world_info() -> WorldInfo:
    """This process's place, from the environment (a world of one when it is unset).

    Raises DistributedSetupError (a ValueError) for malformed values (e.g. ``RANK >=
    WORLD_SIZE``, a ``MASTER_PORT`` outside 1..65535).
    """
    world_size = _env_int("WORLD_SIZE", 1, 1)
    rank = _env_int("RANK", 0, 0)
    local_rank = _env_int("LOCAL_RANK", rank, 0)
    if rank >= world_size:
        raise DistributedSetupError(f"RANK={rank} must be smaller than WORLD_SIZE={world_size}")
    port = os.environ.get("MASTER_PORT")
    return WorldInfo(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        master_addr=os.environ.get("MASTER_ADDR") or None,
        master_port=_env_int("MASTER_PORT", 0, 1, 65535) if port else None,
    )


def is_main_process() -> bool:
    """True on rank 0 (of the initialized process group, else of the environment): the one
    process that prints, shows progress and writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return world_info().rank == 0
