"""Stateless batch normalization written with plain tensor ops.

Three pieces, kept apart:

* :func:`batch_stats` — per-channel mean and biased variance of a batch;
* :func:`update_running_stats` — the in-place moving-average update;
* :func:`normalize` — apply given statistics (autograd-aware, hand-written backward).

:func:`batch_norm` composes them with the contract of ``torch.nn.functional.batch_norm``.
Nothing here calls torch's own batch-norm kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .autograd import BatchNormFunction, BatchNormVjpFunction, compute_dtype, reduce_dims
from .checks import (
    BatchNormArgumentError,
    check_args,
    check_dtypes,
    check_input,
    dense_input,
    flat_channels,
)
from .fused import ACTIVATIONS, fused_batch_norm, fused_poolable, select_kernel
from .gpu import triton_batch_norm

__all__ = ["batch_norm", "batch_stats", "normalize", "update_running_stats", "compute_dtype",
           "check_activation", "apply_activation", "check_pool", "apply_pool", "check_input"]


def check_activation(activation: str | None) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu' or 'sigmoid', got {activation!r}")


def apply_activation(y: Tensor, activation: str | None) -> Tensor:
    """``activation`` (None, "relu" or "sigmoid") applied to ``y`` with torch's own op."""
    if activation == "relu":
        return torch.relu(y)
    if activation == "sigmoid":
        return torch.sigmoid(y)
    return y


def check_pool(pool: int | None, input: Tensor | None = None) -> None:
    """``pool`` is None or 2; with 2, ``input`` (when given) holds at least one 2x2 window
    of an (N, C, H, W) batch."""
    if pool not in (None, 2):
        raise ValueError(f"pool must be None or 2 (2x2 average pooling), got {pool!r}")
    if pool is None or input is None:
        return
    if input.dim() != 4:
        raise ValueError(f"pool=2 needs 4D (N, C, H, W) input, got {input.dim()}D input")
    if input.shape[2] < 2 or input.shape[3] < 2:  # (torch's pooling: a RuntimeError)
        raise BatchNormArgumentError("pool=2 needs H and W of at least 2 (one 2x2 window), "
                                     f"got input of shape {tuple(input.shape)}")


def apply_pool(y: Tensor, pool: int | None) -> Tensor:
    """``y`` (N, C, H, W) 2x2-average-pooled with stride 2 (torch's op) when ``pool`` is 2."""
    return y if pool is None else torch.nn.functional.avg_pool2d(y, 2)


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``(mean, biased variance)`` of ``x`` (N, C, *), each of shape (C,).

    Computed in :func:`compute_dtype` of ``x`` with a two-moment algorithm that does not
    cancel (``var_mean`` uses Welford/centred sums, never ``E[x^2] - E[x]^2``).
    """
    xc = x.to(compute_dtype(x.dtype))
    var, mean = torch.var_mean(xc, dim=reduce_dims(x), correction=0)
    return mean, var


@torch.no_grad()
def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float,
) -> None:
    """In place: ``running = (1 - momentum) * running + momentum * batch``.

    The running variance takes the unbiased batch variance, ``var * count / (count - 1)``.
    """
    mean, var = mean.detach(), var.detach()  # no forward-mode tangent into the buffers
    pairs = [(running_mean, mean)] if running_mean is not None else []
    if running_var is not None:
        pairs.append((running_var, var * (count / (count - 1))))
    for buffer, stat in pairs:
        if _is_batched_tensor(stat) and not _is_batched_tensor(buffer):
            raise RuntimeError(
                "batch norm got a batched input under vmap while its running statistics, "
                "which it would update in place, are not batched: use eval mode, "
                "track_running_stats=False, or batched buffers (torch.func.functional_call)")
    # Every new value first, then the copies: a failure leaves both buffers as they were.
    # In the wider dtype, rounded once into the buffer (a float16 buffer was rounded three
    # times an update: 28% of its channels off by an ulp per step, drifting 3x torch's).
    new = []
    for buffer, stat in pairs:
        wide = torch.promote_types(buffer.dtype, stat.dtype)
        new.append(torch.add(buffer.to(wide) * (1.0 - momentum), stat.to(wide), alpha=momentum))
    for (buffer, _), value in zip(pairs, new):
        buffer.copy_(value)


# Whether a tensor is one batched by torch.func.vmap (as seen inside the vmapped function)
_is_batched_tensor = getattr(torch._C._functorch, "is_batchedtensor", lambda t: False)


def normalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    batch_statistics: bool = False,
) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` per channel, closed-form backward.

    ``x`` is (N, C, *); ``mean``/``var`` have shape (C,), in :func:`compute_dtype` of x.
    ``batch_statistics`` says whether they are the statistics of ``x`` itself (training:
    gradients flow through them) or constants (evaluation with running statistics).
    """
    if batch_statistics:
        # Their dependence on x is in the closed-form gradients (and the jvp): autograd must
        # not also route a gradient through them, which would be None (compiled autograd
        # fails on a None gradient into var_mean's node).
        mean, var = mean.detach(), var.detach()
    function = BatchNormVjpFunction if torch.compiler.is_compiling() else BatchNormFunction
    return function.apply(x, mean, var, weight, bias, eps, batch_statistics)


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    kernel: str | None = None,
    activation: str | None = None,
    num_batches_tracked: Tensor | None = None,
    pool: int | None = None,
) -> Tensor:
    """Batch normalization of ``input`` (N, C, *) — the contract of ``F.batch_norm``.

    Training: normalize with the batch mean and biased variance over all dims but 1, and
    update ``running_mean``/``running_var`` in place when given (``momentum`` is the weight
    of the new value; the running variance takes the unbiased estimate). Otherwise:
    normalize with the running statistics. ``weight``/``bias`` (C,) scale and shift.
    Half/bfloat16 input is computed in float32 and returned in its own dtype.

    ``kernel``: ``"reference"`` (the tensor-op pieces of this module), ``"fused"`` (bnlab's
    C++ CPU kernels), ``"triton"`` (bnlab's Triton GPU kernels) or ``"auto"`` (fused where
    it applies: float32/64 on the CPU; Triton for contiguous or channels-last
    float32/16/bfloat16 CUDA input where Triton is installed); default ``$BNLAB_KERNEL`` or
    ``"auto"``.

    ``activation``: ``"relu"`` or ``"sigmoid"`` applied to the result — on the fused kernels
    in the same pass, with a backward that recomputes it from the input instead of saving
    the output (one activation-sized tensor kept for backward instead of two). Equal to
    ``torch.sigmoid(batch_norm(...))`` to float rounding (the kernels' own ``exp``).

    ``num_batches_tracked``: a module's int64 batch counter, incremented in place in
    training (once the arguments are checked; inside the fused op, saving a call).

    ``pool=2``: 2x2 average pooling with stride 2 after the activation, as
    ``F.avg_pool2d(out, 2)`` (input (N, C, H, W); output (N, C, H // 2, W // 2)). On the
    fused kernels, for contiguous input with even H and W, it happens in the same pass: the
    full-size output is never written, and backward takes the pooled gradient directly.
    Equal to ``F.avg_pool2d`` of the unpooled result (the same sums in the same order).
    """
    check_args(input, running_mean, running_var, weight, bias, training, eps)
    weight, bias = flat_channels(weight), flat_channels(bias)
    check_activation(activation)
    if pool is not None:
        check_pool(pool, input)
    path = "reference"
    per_channel = (weight, bias, running_mean, running_var)
    if input.numel() > 0:
        path = select_kernel(kernel, input, per_channel)
    if path != "fused":  # (the fused kernels take only tensors of the input's dtype)
        check_dtypes(input, per_channel)
    if path == "fused":
        fused_pool = pool if pool is not None and fused_poolable(input) else None
        out = fused_batch_norm(input, weight, bias, running_mean, running_var, training,
                               momentum, eps, activation, num_batches_tracked, fused_pool)
        return out if fused_pool else apply_pool(out, pool)
    if path == "triton":
        return apply_pool(triton_batch_norm(input, weight, bias, running_mean, running_var,
                                            training, momentum, eps, activation,
                                            num_batches_tracked), pool)
    if training and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    out = _reference_batch_norm(input, running_mean, running_var, weight, bias, training,
                                momentum, eps)
    return apply_pool(apply_activation(out, activation), pool)


def _reference_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """The tensor-op path (and every empty batch)."""
    if input.numel() == 0:
        # Like torch: an empty batch passes through (keeping the graph) and no statistic moves.
        out = input.clone()
        if weight is not None:
            out = out * weight.reshape(-1)[:1].to(out.dtype).sum()
        if bias is not None:
            out = out + bias.reshape(-1)[:1].to(out.dtype).sum()
        return out
    input = dense_input(input)
    if training:
        mean, var = batch_stats(input)
        count = input.numel() // input.shape[1]
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    else:  # copies: a training step after this one may update the buffers in place
        mean = running_mean.to(compute_dtype(input.dtype), copy=True)
        var = running_var.to(compute_dtype(input.dtype), copy=True)
    return normalize(input, mean, var, weight, bias, eps, training)
