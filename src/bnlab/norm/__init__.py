"""Batch normalization from first principles: functional op, autograd, modules."""

from .checks import BatchNormArgumentError, MixedDtypeError
from .convert import convert, is_batch_norm
from .functional import batch_norm, batch_stats, normalize, update_running_stats
from .modules import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormBase
from .sync import SyncBatchNorm, convert_sync_batchnorm, sync_batch_norm

__all__ = [
    "BatchNorm",
    "BatchNormArgumentError",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormBase",
    "MixedDtypeError",
    "SyncBatchNorm",
    "batch_norm",
    "batch_stats",
    "convert",
    "convert_sync_batchnorm",
    "is_batch_norm",
    "normalize",
    "sync_batch_norm",
    "update_running_stats",
]
