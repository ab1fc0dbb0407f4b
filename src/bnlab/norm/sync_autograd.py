"""Cross-process batch statistics and the autograd Function of synchronized batch norm.

Forward: every rank reduces its local batch to per-channel ``(count, mean, M2)``
(``M2 = sum((x - mean)^2)``), the triples of all ranks are all-gathered and merged with Chan's
parallel formula::

    n = sum(n_r),  mean = sum(n_r * mean_r) / n,
    M2 = sum(M2_r) + sum(n_r * (mean_r - mean)^2),  var = M2 / n

Every term is non-negative, so nothing cancels (unlike ``E[x^2] - E[x]^2``), and one collective
suffices (two all-reduces of sums and then of centred squares would need a second pass over
``x`` and a second round trip). The merge runs in float64 (float32 where the device has no
float64). A rank with an empty batch sends ``n_r = 0`` and so contributes nothing.

Backward, with the global statistics and global count ``n``::

    dx = weight * invstd * (dy - sum(dy) / n - x_hat * sum(dy * x_hat) / n)

where both sums are all-reduced over the ranks; ``dweight = sum(dy * x_hat)`` and
``dbias = sum(dy)`` are the *local* sums, as in ``torch.nn.SyncBatchNorm``: the data-parallel
wrapper (DDP) combines parameter gradients across ranks itself.

Only ``all_gather`` and ``all_reduce`` on tensors on the input's device are used, so any
backend works (gloo on CPU, nccl on CUDA). Every rank must call these in the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from .autograd import apply_statistics, channel_view, compute_dtype, reduce_dims

__all__ = ["SyncBatchNormFunction", "comm_dtype", "sync_batch_stats"]


def comm_dtype(device: torch.device) -> torch.dtype:
    """Dtype statistics travel and merge in: float64, except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def local_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel ``(count, mean, M2)`` of ``x`` (N, C, *), in :func:`comm_dtype`.

    ``count`` has shape (1,), ``mean``/``M2`` (C,); an empty ``x`` gives zeros.
    """
    dtype = comm_dtype(x.device)
    channels = x.shape[1]
    count = x.numel() // channels if channels else 0
    if count == 0:
        zeros = torch.zeros(channels, dtype=dtype, device=x.device)
        return torch.zeros(1, dtype=dtype, device=x.device), zeros, zeros.clone()
    var, mean = torch.var_mean(x.to(compute_dtype(x.dtype)), dim=reduce_dims(x), correction=0)
    n = torch.full((1,), float(count), dtype=dtype, device=x.device)
    return n, mean.to(dtype), var.to(dtype) * count


@torch.no_grad()
def sync_batch_stats(x: Tensor, group: dist.ProcessGroup | None) -> tuple[Tensor, Tensor, int]:
    """``(mean, biased var, count)`` per channel over the union of every rank's ``x``.

    ``x`` is this rank's (N, C, *) batch, N may differ between ranks and may be 0. ``mean`` and
    ``var`` have shape (C,) in the compute dtype of ``x`` (undefined when ``count == 0``);
    ``count`` is the global number of values per channel. A collective: all ranks of
    ``group`` must call it.
    """
    n, mean, m2 = local_moments(x)
    local = torch.cat([n, mean, m2])
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    table = torch.stack(gathered)  # (world, 1 + 2C)
    channels = x.shape[1]
    counts, means, m2s = table[:, :1], table[:, 1 : 1 + channels], table[:, 1 + channels :]
    total = counts.sum()
    count = int(total.item())
    cdt = compute_dtype(x.dtype)
    if count == 0:
        empty = torch.zeros(channels, dtype=cdt, device=x.device)
        return empty, empty.clone(), 0
    global_mean = (counts * means).sum(0) / total
    global_m2 = m2s.sum(0) + (counts * (means - global_mean) ** 2).sum(0)
    return global_mean.to(cdt), (global_m2 / total).to(cdt), count


class SyncBatchNormFunction(torch.autograd.Function):
    """``y = (x - mean) * rsqrt(var + eps) * weight + bias`` with statistics global over
    ``group`` (see the module docstring for the backward).

    ``mean``/``var`` (C,) come from :func:`sync_batch_stats` (constants to autograd; their
    dependence on ``x`` is in the closed-form backward); ``count`` is the global count.
    """

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps, count, group):
        invstd = torch.rsqrt(var + eps)
        y = apply_statistics(x, mean, invstd, weight, bias)
        ctx.save_for_backward(x, mean, invstd, weight)
        ctx.count = count
        ctx.group = group
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, mean, invstd, weight = ctx.saved_tensors
        need_x, _, _, need_w, need_b, _, _, _ = ctx.needs_input_grad
        dims = reduce_dims(x)
        g = dy.to(invstd.dtype)
        xmu = x.to(invstd.dtype) - channel_view(mean, x)
        # Sums over an empty batch are zeros: a rank without samples still joins the
        # all-reduce below and returns zero parameter gradients (so DDP sees every grad).
        sum_dy = g.sum(dims)
        sum_dy_xmu = (g * xmu).sum(dims)
        dx = dweight = dbias = None
        if need_w and weight is not None:
            dweight = (sum_dy_xmu * invstd).to(weight.dtype)
        if need_b and ctx.bias_dtype is not None:
            dbias = sum_dy.to(ctx.bias_dtype)
        if need_x:
            both = torch.cat([sum_dy, sum_dy_xmu]).to(comm_dtype(x.device))
            dist.all_reduce(both, op=dist.ReduceOp.SUM, group=ctx.group)
            total_dy, total_dy_xmu = both.to(invstd.dtype).chunk(2)
            n = ctx.count
            scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
            proj = invstd * invstd * total_dy_xmu / n
            dx = g - channel_view(total_dy / n, x) - xmu * channel_view(proj, x)
            dx = (dx * channel_view(scale, x)).to(x.dtype)
        return dx, None, None, dweight, dbias, None, None, None
