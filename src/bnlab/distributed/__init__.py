"""Multi-process (data-parallel) runs on torch.distributed: where a process sits, joining
the process group, the collectives a run needs, and a local launcher."""

from .collectives import all_reduce_sum, broadcast_buffers, same_on_all_ranks, unwrap
from .env import DistributedSetupError, WorldInfo, is_main_process, world_info
from .launch import free_port, spawn_local
from .process_group import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    backend_for,
    cleanup,
    init_distributed,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedSetupError",
    "MAX_TIMEOUT_S",
    "WorldInfo",
    "all_reduce_sum",
    "backend_for",
    "broadcast_buffers",
    "cleanup",
    "free_port",
    "init_distributed",
    "is_main_process",
    "same_on_all_ranks",
    "spawn_local",
    "unwrap",
    "world_info",
]
