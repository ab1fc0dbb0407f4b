"""Models for the batch-norm experiments: the notebook's LeNet and a registry by name."""

from .lenet import NORMS, lenet, lenet_relu
from .registry import MODELS, available_models, build_model, count_parameters

__all__ = [
    "MODELS",
    "NORMS",
    "available_models",
    "build_model",
    "count_parameters",
    "lenet",
    "lenet_relu",
]
