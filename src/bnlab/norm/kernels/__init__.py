"""Fused CPU kernels for batch norm (C++, compiled on first use; see :mod:`.build`)."""

from .loader import KernelUnavailable, batch_norm_op, cpu_ops, kernel_status, triton_node

__all__ = ["KernelUnavailable", "batch_norm_op", "cpu_ops", "kernel_status", "triton_node"]
