"""Batch norm on bnlab's fused C++ CPU kernels: statistics, running-stat update and the
affine transform in two passes over the input forward, two backward.

Same contract and saved tensors as :class:`~bnlab.norm.autograd.BatchNormFunction`. Double
backward (a backward under grad mode) takes the differentiable tensor-op formulas instead.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .autograd import closed_form_grads
from .kernels import cpu_ops

KERNELS = ("auto", "fused", "reference")
_FUSED_DTYPES = (torch.float32, torch.float64)


class FusedBatchNormFunction(torch.autograd.Function):
    """``y = (x - mean) * invstd * weight + bias`` with batch (``training``) or running
    statistics; in training the running statistics are updated in place."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        ops = cpu_ops(required=True)
        if training:
            y, mean, invstd = ops.forward_train(x, weight, bias, running_mean, running_var,
                                                momentum, eps)
        else:
            y, invstd = ops.forward_eval(x, running_mean, running_var, weight, bias, eps)
            mean = running_mean.clone()  # a later training step updates the buffer in place
        ctx.save_for_backward(x, mean, invstd, weight)  # as the reference path: x + (C,) stats
        ctx.training, ctx.eps = training, eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, invstd, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            dx, dw, db = closed_form_grads(dy, x, mean, invstd, weight, ctx.eps, ctx.training,
                                           (need_x, need_w, need_b), ctx.bias_dtype)
        else:
            dx, dw, db = cpu_ops(required=True).backward(
                dy, x, mean, invstd, weight, ctx.training, need_x, need_w and weight is not None,
                need_b and ctx.bias_dtype is not None)
        return dx, dw, db, None, None, None, None, None


def requested_kernel(kernel: str | None) -> str:
    """``kernel``, else ``$BNLAB_KERNEL``, else ``"auto"``; validated."""
    choice = kernel if kernel is not None else os.environ.get("BNLAB_KERNEL", "auto")
    if choice not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {choice!r}")
    return choice


def fused_eligible(x: Tensor, *params: Tensor | None) -> bool:
    """The fused kernels take float32/float64 CPU tensors with parameters of the same dtype."""
    if x.device.type != "cpu" or x.dtype not in _FUSED_DTYPES or x.numel() == 0:
        return False
    if type(x) is not Tensor and not isinstance(x, torch.nn.Parameter):
        return False  # tensor subclasses keep their own dispatch
    return all(p is None or (p.device.type == "cpu" and p.dtype == x.dtype and p.dim() == 1
                             and p.is_contiguous()) for p in params)


def use_fused(kernel: str | None, x: Tensor, *params: Tensor | None) -> bool:
    """Whether the fused kernels run for these inputs. ``"reference"``: never. ``"fused"``:
    wherever they apply, raising :class:`KernelUnavailable` if they cannot be built.
    ``"auto"``: wherever they apply and load (else silently the reference path)."""
    choice = requested_kernel(kernel)
    if choice == "reference" or not fused_eligible(x, *params):
        return False
    return cpu_ops(required=choice == "fused") is not None
