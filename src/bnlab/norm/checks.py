"""What batch norm refuses, as torch's does, and the light normalizations of its
arguments (a (C,) view of per-channel tensors, dense input) shared by the local and the
synchronized op."""

from __future__ import annotations

import torch
from torch import Tensor

from .autograd import channels_last_format

__all__ = ["BatchNormArgumentError", "MixedDtypeError", "check_args", "check_dtypes",
           "check_input", "check_per_channel", "dense_input", "flat_channels"]


class BatchNormArgumentError(ValueError, RuntimeError):
    """An argument torch's batch norm refuses with a RuntimeError (a channel count that does
    not match the input's, no running statistics in evaluation): a ValueError like bnlab's
    other argument errors, and the RuntimeError code written for torch's layers catches."""


class MixedDtypeError(BatchNormArgumentError):
    """Parameters or statistics of a dtype torch's batch norm refuses for the input's."""


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_dtypes(x: Tensor, tensors: tuple[Tensor | None, ...]) -> None:
    """torch's rule: each per-channel tensor has ``x``'s dtype, or float32 for half/bfloat16
    ``x`` (mixed precision)."""
    for t in tensors:
        if t is not None and t.dtype != x.dtype and not (
                x.dtype in _LOW_PRECISION and t.dtype == torch.float32):
            raise MixedDtypeError(
                f"mixed dtypes: {x.dtype} input with {t.dtype} parameters or statistics; "
                f"they must be {x.dtype}" + (" or torch.float32" if x.dtype in _LOW_PRECISION
                                              else ""))


def check_input(x: Tensor, eps: float, training: bool) -> None:
    """ValueError unless ``x`` is real floating point and ``eps`` > 0 in training, >= 0 in
    evaluation (torch's checks; shared with the synchronized op, which runs them before any
    communication)."""
    if not x.is_floating_point():  # (False for complex dtypes too)
        raise ValueError(f"batch_norm expects real floating-point input, got {x.dtype}")
    if training and not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, got {eps}")
    if eps < 0:  # (a NaN passes, as in torch)
        raise ValueError(f"batch_norm eps must be non-negative, got {eps}")


def check_per_channel(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
) -> None:
    """``x`` is (N, C, *); each per-channel tensor given has C elements; running statistics
    come both or neither (shared with the synchronized op, before any communication)."""
    if x.dim() < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, *), got {x.dim()}D input")
    channels = x.shape[1]
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if t is not None and t.numel() != channels:
            raise BatchNormArgumentError(
                f"channel mismatch: input has {channels} channels (dim 1 of shape "
                f"{tuple(x.shape)}) but {name} has {t.numel()} elements"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be "
                         "None")


def flat_channels(t: Tensor | None) -> Tensor | None:
    """A per-channel tensor of any shape with C elements (torch's forward takes them) as a
    (C,) view, so that its gradient comes back in its own shape."""
    return t if t is None or t.dim() == 1 else t.reshape(-1)


def dense_input(x: Tensor) -> Tensor:
    """``x``, made contiguous unless it is already so or channels-last: elementwise ops
    keep odd strides, and torch's layers return such input's output contiguous."""
    if x.is_contiguous() or channels_last_format(x) is not None:
        return x
    return x.contiguous()


def check_args(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
) -> None:
    """Everything :func:`bnlab.functional.batch_norm` refuses before it computes, as
    ``torch.nn.functional.batch_norm`` refuses it (dtypes apart: see :func:`check_dtypes`)."""
    check_per_channel(x, running_mean, running_var, weight, bias)
    check_input(x, eps, training)
    if not training and running_mean is None:
        raise BatchNormArgumentError(
            "running_mean and running_var must be given when training=False")
    if training:
        channels = x.shape[1]
        count = x.numel() // channels if channels else 0
        if count == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {tuple(x.shape)}"
            )
