"""bnlab: batch normalization from first principles in PyTorch."""

from . import functional
from .norm import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormBase,
    convert,
    is_batch_norm,
)

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormBase",
    "__version__",
    "convert",
    "functional",
    "is_batch_norm",
]
