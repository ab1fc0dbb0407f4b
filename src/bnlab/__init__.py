"""bnlab: batch normalization from first principles in PyTorch.

The notebook's helpers are here under their notebook names::

    from bnlab import train_classify, GPUMemoryManager, load_data_fashion_mnist, BatchNorm
"""

from . import functional
from .data import CLASSES, DatasetError, FashionMNIST, load_data_fashion_mnist
from .device import select_device
from .memory import GPUMemoryManager
from .models import available_models, build_model, count_parameters
from .norm import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormBase,
    SyncBatchNorm,
    convert,
    convert_sync_batchnorm,
    is_batch_norm,
)
from .train import EpochRecord, History, NonFiniteLossError, evaluate, train_classify

__version__ = "0.1.0"

__all__ = [
    "CLASSES",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormBase",
    "DatasetError",
    "EpochRecord",
    "FashionMNIST",
    "GPUMemoryManager",
    "History",
    "NonFiniteLossError",
    "SyncBatchNorm",
    "__version__",
    "available_models",
    "build_model",
    "convert",
    "convert_sync_batchnorm",
    "count_parameters",
    "evaluate",
    "functional",
    "is_batch_norm",
    "load_data_fashion_mnist",
    "select_device",
    "train_classify",
]
