"""C++ kernels for the models' layers outside batch norm (compiled on first use)."""

from .loader import conv_ops, layer_kernel_status, pool_ops

__all__ = ["conv_ops", "layer_kernel_status", "pool_ops"]
