"""Joining and leaving the default process group: gloo for CPU tensors, nccl for CUDA.

Every collective of the group waits at most ``timeout_s`` seconds for the other processes;
past it the waiting process raises (nccl: its watchdog aborts the communicator), so a rank
that died or hangs ends the run with an error instead of a silent hang.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from .env import DistributedSetupError, WorldInfo, world_info

__all__ = ["DEFAULT_TIMEOUT_S", "backend_for", "cleanup", "init_distributed"]

# Long enough for a checkpoint write or an evaluation pass on one rank while the others
# wait, short enough that a dead peer surfaces within a couple of minutes.
DEFAULT_TIMEOUT_S = 120.0
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: beyond it no wait is a wait, and timedelta overflows

# torch's rendezvous failures (timeouts, unreachable or busy addresses) are DistErrors.
_RENDEZVOUS_ERRORS = getattr(dist, "DistError", RuntimeError)
_LIKELY_CAUSE = ("check that every rank started with the same MASTER_ADDR, MASTER_PORT and "
                 "WORLD_SIZE, that rank 0 can listen on that port (not in use by another run) "
                 "and the others can reach it")


def backend_for(device: torch.device | str | None = None) -> str:
    """"nccl" for CUDA devices (None: when CUDA is available and nccl is built), else "gloo"."""
    if device is None:
        cuda = torch.cuda.is_available() and dist.is_nccl_available()
    else:
        cuda = torch.device(device).type == "cuda"
    return "nccl" if cuda else "gloo"


def init_distributed(backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> WorldInfo:
    """Join the default process group described by the environment (see :mod:`.env`).

    ``backend``: "gloo", "nccl" or "auto" (:func:`backend_for` of the machine). With nccl the
    current CUDA device becomes ``cuda:LOCAL_RANK``. A world of one, or a group that is
    already initialized, is left as it is. Returns this process's :class:`WorldInfo`.
    Raises DistributedSetupError (a ValueError) when ``MASTER_ADDR``/``MASTER_PORT`` are
    missing, ``timeout_s`` is not in (0, :data:`MAX_TIMEOUT_S`], or the rendezvous fails
    (a peer missing after ``timeout_s``, the port in use, the address unreachable).
    """
    info = world_info()
    if not info.distributed or dist.is_initialized():
        return info
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise DistributedSetupError(
            f"timeout_s must be a number of seconds in (0, {MAX_TIMEOUT_S}], got {timeout_s!r}")
    if info.master_addr is None or info.master_port is None:
        raise DistributedSetupError(
            f"WORLD_SIZE={info.world_size} but MASTER_ADDR/MASTER_PORT are not set: start the "
            "processes with torchrun or `bnlab train --nproc N`"
        )
    backend = backend_for() if backend == "auto" else backend
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    try:
        dist.init_process_group(backend, init_method="env://", rank=info.rank,
                                world_size=info.world_size, timeout=timedelta(seconds=timeout_s))
    except _RENDEZVOUS_ERRORS as err:
        raise DistributedSetupError(
            f"rank {info.rank} of {info.world_size} could not join the process group at "
            f"{info.master_addr}:{info.master_port} (timeout {timeout_s:g} s): "
            f"{str(err).rstrip('.')}; "
            f"{_LIKELY_CAUSE}") from err
    return info



def cleanup() -> None:
    """Leave the default process group, if one is initialized."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
