"""Data-parallel pieces of a training run: each rank's device, the DDP-wrapped model with
synchronized batch norm, and the checks that keep the ranks in step."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.loader import TensorLoader
from ..device import select_device
from ..distributed import WorldInfo, same_on_all_ranks
from ..norm import convert_sync_batchnorm
from .errors import RunError

__all__ = ["agree_on_resume", "check_global_batch", "rank_device", "wrap_model"]


def rank_device(name: str, world: WorldInfo) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when ``name`` selects CUDA, else the CPU.

    Raises RunError for MPS (no torch.distributed backend) or too few GPUs.
    """
    device = select_device(name)
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise RunError(f"process with LOCAL_RANK={world.local_rank} has no GPU: this "
                           f"machine has {torch.cuda.device_count()}; start at most that many")
        return torch.device("cuda", world.local_rank)
    if device.type != "cpu":
        raise RunError(f"multi-process training runs on CPUs (gloo) or CUDA GPUs (nccl), "
                       f"not on {device.type}; pass --device cpu")
    return device


def wrap_model(model: nn.Module, device: torch.device, sync_bn: bool) -> DistributedDataParallel:
    """``model`` (on ``device``) in DDP; with ``sync_bn`` its BN layers become
    :class:`bnlab.SyncBatchNorm` first (in place, same tensors).

    With sync BN the running statistics are identical on every rank by construction, so DDP
    need not broadcast buffers each step; without it rank 0's are broadcast (torch's default).
    """
    if sync_bn:
        model = convert_sync_batchnorm(model)
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    # Set after construction: torch 2.13 deprecates the constructor flag for
    # forward_sync_buffers, which older versions lack; the attribute works in both.
    ddp.broadcast_buffers = not sync_bn
    return ddp


def check_global_batch(loader: TensorLoader) -> None:
    """Every rank must take a training step: raise RunError when the data has no full
    global batch (the partial last one is left out in multi-process training)."""
    if len(loader) == 0:
        step = loader.batch_size * loader.world_size
        raise RunError(f"{len(loader.labels)} training samples make no global batch of {step} "
                       f"(--batch-size {loader.batch_size} x {loader.world_size} processes); "
                       "lower --batch-size or use more samples")


def agree_on_resume(done: int, device: torch.device) -> None:
    """All ranks must resume from the same epoch (they read the same checkpoint)."""
    if not same_on_all_ranks(done, device):
        raise RunError(f"this process would resume after epoch {done} but another would not: "
                       "every process must see the same --out directory (a shared "
                       "filesystem across machines)")
