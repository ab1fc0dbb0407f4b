"""Batch norm on bnlab's fused C++ CPU kernels (``kernels/cpu_kernels.cpp``): statistics,
running-stat update and affine transform in two passes over the input forward, two backward,
with the autograd node itself in C++ (no Python runs in backward).

Same contract and saved tensors as the reference
:class:`~bnlab.norm.autograd.BatchNormFunction`; a backward that is itself differentiated
(double backward) uses the same closed form written with differentiable ATen ops.
"""

from __future__ import annotations

import os

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from . import gpu
from .kernels import KernelUnavailable, batch_norm_op, cpu_ops

KERNELS = ("auto", "fused", "triton", "reference")
# The fused kernels' codes for the activations they can apply after the affine transform.
ACTIVATIONS = {None: 0, "relu": 1, "sigmoid": 2}
_FUSED_DTYPES = (torch.float32, torch.float64)
_PLAIN = (Tensor, torch.nn.Parameter)


def fused_batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    activation: str | None = None,
    num_batches_tracked: Tensor | None = None,
    pool: int | None = None,
) -> Tensor:
    """``F.batch_norm``'s computation on the fused kernels (inputs already validated),
    followed in the same pass by ``activation`` (None, "relu" or "sigmoid") and, with
    ``pool=2``, a 2x2 average pooling (input: contiguous (N, C, H, W), H and W even; see
    :func:`fused_poolable`); in training ``num_batches_tracked`` (when given) is incremented
    in place."""
    return batch_norm_op()(x, weight, bias, running_mean, running_var, training, momentum,
                           eps, ACTIVATIONS[activation], num_batches_tracked, pool or 1)


def fused_poolable(x: Tensor) -> bool:
    """Whether the fused kernels pool ``x``'s output themselves: contiguous (N, C, H, W)
    input with even H and W (otherwise the pooling runs as its own op after them)."""
    return x.dim() == 4 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0 and x.is_contiguous()


# os.environ.get encodes its key on every call (~0.7 µs, more than the rest of the kernel
# choice); os.environ keeps its current contents in its own dict, updated by every change.
_KERNEL_KEY = os.environ.encodekey("BNLAB_KERNEL") if hasattr(os.environ, "encodekey") else None


def kernel_setting() -> str | None:
    """``$BNLAB_KERNEL`` as it is now (None when unset)."""
    environ = os.environ  # (looked up each call: a test may replace the whole mapping)
    data = getattr(environ, "_data", None)
    if data is None or _KERNEL_KEY is None:
        return environ.get("BNLAB_KERNEL")
    value = data.get(_KERNEL_KEY)
    return None if value is None else environ.decodevalue(value)


def requested_kernel(kernel: str | None) -> str:
    """``kernel``, else ``$BNLAB_KERNEL``, else ``"auto"``; validated."""
    choice = kernel or kernel_setting() or "auto"
    if choice not in KERNELS:
        name = "kernel" if kernel else "the environment variable BNLAB_KERNEL"
        raise ValueError(f"{name} must be one of {', '.join(KERNELS)}; got {choice!r}")
    return choice


def fused_eligible(x: Tensor, params: tuple[Tensor | None, ...]) -> bool:
    """The fused kernels take float32/float64 CPU tensors, and parameters and statistics of
    the same dtype, contiguous. (Cheap checks: this runs on every call.)"""
    dtype = x.dtype
    if not x.is_cpu or dtype not in _FUSED_DTYPES or type(x) not in _PLAIN:
        return False  # tensor subclasses keep their own dispatch
    for p in params:
        if p is not None and (p.dtype is not dtype or not p.is_cpu or not p.is_contiguous()):
            return False
    return True


_functorch_level = torch._C._functorch.maybe_current_level
_is_tracing = torch._C._is_tracing


def transform_active() -> bool:
    """Whether forward-mode AD (a ``dual_level``), a ``torch.func`` transform (grad, jvp,
    vmap, ...) or ``torch.jit.trace`` is active: global checks (no per-tensor ones), ~0.1 µs
    on every call."""
    return forward_ad._current_level >= 0 or _functorch_level() is not None or _is_tracing()


def select_kernel(kernel: str | None, x: Tensor, params: tuple[Tensor | None, ...]) -> str:
    """Which kernels run for these inputs: ``"fused"`` (C++, CPU), ``"triton"`` (GPU) or
    ``"reference"`` (tensor ops). A requested ``"fused"``/``"triton"`` runs wherever it
    applies and raises :class:`KernelUnavailable` when it cannot be had; ``"auto"`` takes
    the fused kernels on the CPU and Triton on CUDA where they apply and load, else the
    reference path; ``"reference"``: always the reference."""
    choice = requested_kernel(kernel)
    if choice == "reference" or torch.compiler.is_compiling():
        return "reference"  # under torch.compile the tensor-op path is traced and fused
    if transform_active():
        # the kernels have no forward-mode or vmap rules, and a trace of them would need
        # bnlab's library loaded to run: the tensor ops have both
        return "reference"
    if choice == "triton":
        if gpu.triton_ops() is None:
            raise KernelUnavailable(
                f"bnlab's Triton kernels are unavailable: {gpu.triton_status()}")
        return "triton" if gpu.triton_eligible(x, params) else "reference"
    if fused_eligible(x, params):
        return "fused" if cpu_ops(required=choice == "fused") is not None else "reference"
    if choice == "auto" and x.is_cuda and gpu.triton_eligible(x, params):
        return "triton"
    return "reference"
