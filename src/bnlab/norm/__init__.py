"""Batch normalization from first principles: functional op, autograd, modules."""

from .convert import convert, is_batch_norm
from .functional import batch_norm, batch_stats, normalize, update_running_stats
from .modules import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormBase

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormBase",
    "batch_norm",
    "batch_stats",
    "convert",
    "is_batch_norm",
    "normalize",
    "update_running_stats",
]
