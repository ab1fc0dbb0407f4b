"""The few collectives a data-parallel run needs beyond DDP's own.

Each is a no-op without an initialized process group (or in a world of one), so callers
need not branch. All are collectives otherwise: every rank must call them in the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["all_reduce_sum", "broadcast_buffers", "same_on_all_ranks", "unwrap"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks, in place; returns it (every rank gets the sum)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Overwrite every buffer of ``module`` (e.g. BN running statistics) with rank ``src``'s."""
    if _active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def same_on_all_ranks(value: int, device: torch.device | str = "cpu") -> bool:
    """Whether every rank passed the same integer ``value`` (one all-reduce of min and max)."""
    if not _active():
        return True
    both = torch.tensor([value, -value], dtype=torch.int64, device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return int(both[0]) == -int(both[1])


def unwrap(net: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (``net`` itself otherwise)."""
    return net.module if isinstance(net, DistributedDataParallel) else net
