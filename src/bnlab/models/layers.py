"""LeNet's convolution and pooling on bnlab's C++ kernels where they measured faster.

Both are the torch modules themselves (same repr, parameters, state_dict), whose forward
takes bnlab's kernel when it applies and torch's otherwise:

- :class:`AvgPool2d`: ``nn.AvgPool2d(kernel_size=2, stride=2)`` on
  ``torch.ops.bnlab_pool.avg_pool2x2``: bit-identical result and gradient, ~5x faster here;
- :class:`Conv2d`: ``nn.Conv2d`` on ``torch.ops.bnlab_conv.conv2d`` for single-channel
  input (LeNet's first layer), stride 1, no padding: same result to float rounding, ~1.2-1.6x
  faster here. With more input channels oneDNN's convolution is faster and is used.

"Applies" means contiguous float32/float64 CPU tensors, not under ``torch.compile``, forward-
mode AD, a ``torch.func`` transform, ``torch.jit.trace`` or ``torch.fx`` tracing (the
kernels have rules for none of these: torch's ops run, and are what gets traced), not
``BNLAB_KERNEL=reference``, and the kernel library built (a C++ compiler is present).
``torch.jit.script`` does not compile these layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..norm.fused import kernel_setting, transform_active
from .kernels import conv_ops, pool_ops

__all__ = ["AvgPool2d", "Conv2d", "fast_conv_applies", "fast_pool_applies"]

_DTYPES = (torch.float32, torch.float64)
_PLAIN = (Tensor, nn.Parameter)


def _plain_cpu_input(x: Tensor, dims: int) -> bool:
    # type first: an FX Proxy must not reach the comparisons (they would be traced)
    return (type(x) in _PLAIN and x.dtype in _DTYPES and x.is_cpu and x.dim() == dims
            and x.is_contiguous() and _not_channels_last(x)
            and not torch.compiler.is_compiling()
            and not transform_active()
            and kernel_setting() != "reference")


def _not_channels_last(t: Tensor) -> bool:
    """A 4D tensor of one channel (an input, or a weight of one input channel) is contiguous
    both ways; its strides say which torch sees (channels-last: torch's output would be
    too, so torch's op runs)."""
    return t.shape[1] != 1 or t.stride(1) == t.shape[2] * t.shape[3] or t.numel() == 0


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def fast_pool_applies(x: Tensor, pool: nn.AvgPool2d | None = None) -> bool:
    """Whether bnlab's 2x2 pooling kernel takes ``x`` (checked on every call: cheap);
    ``pool``: the layer, which must still be a plain 2x2 average (its settings can be
    changed after construction)."""
    return ((pool is None or _plain_2x2(pool))
            and _plain_cpu_input(x, 4) and x.shape[1] >= 1 and x.shape[2] >= 2
            and x.shape[3] >= 2 and pool_ops() is not None)


def _plain_2x2(pool: nn.AvgPool2d) -> bool:
    return (pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0)) and not pool.ceil_mode
            and pool.divisor_override is None)


def fast_conv_applies(conv: nn.Conv2d, x: Tensor, weight: Tensor | None = None,
                      bias: Tensor | None = None) -> bool:
    """Whether bnlab's convolution kernel takes ``conv(x)`` (not under CPU autocast, where
    torch's convolution runs in the lower precision); ``weight``/``bias``: the layer's, as
    already read (a parametrized weight is computed on each read)."""
    w = conv.weight if weight is None else weight
    b = conv.bias if weight is None else bias
    return (conv.in_channels == 1 and conv.groups == 1 and conv.stride == (1, 1)
            and not _cpu_autocast()
            and conv.dilation == (1, 1) and conv.padding in ((0, 0), "valid")
            and _plain_cpu_input(x, 4) and w.dtype == x.dtype and w.is_contiguous()
            and _not_channels_last(w) and w.shape[0] >= 1 and (b is None or b.dtype == x.dtype)
            and x.shape[2] >= w.shape[2] and x.shape[3] >= w.shape[3]
            and conv_ops() is not None)


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d(kernel_size=2, stride=2)`` (those are its defaults; other settings
    take torch's op); (N, C, H, W) -> (N, C, H // 2, W // 2)."""

    def __init__(self, kernel_size: int | tuple[int, int] = 2,
                 stride: int | tuple[int, int] | None = 2, **kwargs: object) -> None:
        super().__init__(kernel_size=kernel_size, stride=stride, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if fast_pool_applies(x, self):
            return pool_ops().avg_pool2x2.default(x)
        return super().forward(x)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments); (N, C, H, W) -> (N, O, H - kH + 1, W - kW + 1) on
    bnlab's kernel where :func:`fast_conv_applies`."""

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight, self.bias  # once: a parametrization computes each read
        if fast_conv_applies(self, x, weight, bias):
            return conv_ops().conv2d.default(x, weight, bias)
        return self._conv_forward(x, weight, bias)
