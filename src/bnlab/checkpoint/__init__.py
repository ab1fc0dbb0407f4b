"""Safe training checkpoints: safetensors + JSON in a directory, written atomically, read
without ever unpickling. See :mod:`bnlab.checkpoint.api` for the layout."""

from .api import (
    Checkpoint,
    checkpoint_exists,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)
from .errors import CheckpointError
from .rng import capture_rng_state, restore_rng_state

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "capture_rng_state",
    "checkpoint_exists",
    "load_checkpoint",
    "read_checkpoint_state",
    "restore_rng_state",
    "save_checkpoint",
]
