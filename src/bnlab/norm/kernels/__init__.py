"""bnlab's C++ for batch norm, compiled on first use (see :mod:`.build`): the fused CPU
kernels, and the Triton path's autograd node."""

from .loader import KernelUnavailable, batch_norm_op, cpu_ops, kernel_status, triton_node

__all__ = ["KernelUnavailable", "batch_norm_op", "cpu_ops", "kernel_status", "triton_node"]
