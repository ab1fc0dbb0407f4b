"""The autograd Function behind :func:`bnlab.functional.normalize`: forward and its
closed-form backward side by side.

Notation, per channel c, with sums over every dim but 1 and ``n`` elements per channel:
``x_hat = (x - mean) * invstd``, ``y = x_hat * weight + bias``.

* training (``mean``/``invstd`` are the batch's own statistics)::

      dx = weight * invstd * (dy - mean(dy) - x_hat * mean(dy * x_hat))
* evaluation (constant statistics)::

      dx = dy * weight * invstd
* both: ``dweight = sum(dy * x_hat)``, ``dbias = sum(dy)``.

The backward is written with differentiable tensor ops, so double backward works: when a
graph is being built (``create_graph=True``) the training statistics are recomputed from
``x`` so that their dependence on ``x`` is part of that graph.
"""

from __future__ import annotations

import torch
from torch import Tensor


def channel_view(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a (C,) tensor to (1, C, 1, ..., 1) to broadcast against ``like``."""
    return t.reshape((1, -1) + (1,) * (like.dim() - 2))


def channels_last_format(x: Tensor) -> torch.memory_format | None:
    """channels_last (4-D) or channels_last_3d (5-D) where ``x`` is laid out so (and is not
    also plain contiguous, as size-1 dims allow); else None."""
    dim = x.dim()
    if dim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if dim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: float32 for half/bfloat16 input, else the input's."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def reduce_dims(x: Tensor) -> list[int]:
    """All dims but the channel dim 1 of an (N, C, *) tensor."""
    return [0, *range(2, x.dim())]


def apply_statistics(
    x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None
) -> Tensor:
    """``(x - mean) * invstd * weight + bias`` per channel, computed in ``invstd``'s dtype
    and returned in ``x``'s; ``mean``/``invstd``/``weight``/``bias`` are (C,)."""
    scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
    # (x - mean) * scale rather than x * scale + (bias - mean * scale): the folded form
    # loses precision when |mean| >> std (mean 1e4, std 0.1 in float32).
    y = (x.to(invstd.dtype) - channel_view(mean, x)) * channel_view(scale, x)
    if bias is not None:
        y = y + channel_view(bias.to(y.dtype), x)
    return y.to(x.dtype)


def _save_for_backward(ctx, inputs: tuple) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Save what backward needs on ``ctx`` (``inputs`` are ``forward``'s); returns the
    saved tensors ``(x, mean, invstd, weight)``."""
    x, mean, var, weight, bias, eps, batch_statistics = inputs
    # Saved: the input (kept alive by most producers anyway; torch's kernel saves it too)
    # and the two (C,) statistics; x_hat, y and every temporary are recomputed.
    saved = (x, mean, torch.rsqrt(var + eps), weight)
    ctx.save_for_backward(*saved)
    ctx.eps = eps
    ctx.batch_statistics = batch_statistics
    ctx.bias_dtype = None if bias is None else bias.dtype
    return saved


class BatchNormVjpFunction(torch.autograd.Function):
    """``y = (x - mean) * rsqrt(var + eps) * weight + bias``; see the module docstring.

    ``mean``/``var`` (C,) are in the compute dtype; ``weight``/``bias`` (C,) or None.
    Reverse mode only: this is the form ``torch.compile`` traces (Dynamo does not trace a
    Function with a custom ``jvp``); eager code uses :class:`BatchNormFunction`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, mean, var, weight, bias, eps, batch_statistics):
        return apply_statistics(x, mean, torch.rsqrt(var + eps), weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save_for_backward(ctx, inputs)

    @staticmethod
    def backward(ctx, dy):
        x, mean, invstd, weight = ctx.saved_tensors
        need_x, _, _, need_w, need_b, _, _ = ctx.needs_input_grad
        dx, dweight, dbias = closed_form_grads(
            dy, x, mean, invstd, weight, ctx.eps, ctx.batch_statistics,
            (need_x, need_w, need_b), ctx.bias_dtype,
        )
        return dx, None, None, dweight, dbias, None, None


class BatchNormFunction(BatchNormVjpFunction):
    """:class:`BatchNormVjpFunction` with forward mode too: reverse mode (``backward``),
    forward mode (``jvp``) and ``torch.func`` transforms (``vmap`` by the generated rule)."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_forward(*_save_for_backward(ctx, inputs))

    @staticmethod
    def jvp(ctx, dx, dmean, dvar, dweight, dbias, _eps, _batch_statistics):
        """The output's tangent from the inputs' (None: zero). In training the batch
        statistics are functions of ``x``: their tangents are computed here from ``x``'s
        (the statistics arrive detached, see :func:`bnlab.norm.functional.normalize`), and
        the chain rule through ``mean`` and ``var`` completes the derivative."""
        x, mean, invstd, weight = ctx.saved_tensors
        dt = invstd.dtype
        xmu = x.to(dt) - channel_view(mean, x)
        d_xmu = xmu.new_zeros(()) if dx is None else dx.to(dt)
        if ctx.batch_statistics:  # d mean = mean(dx), d var = 2 mean(xmu * (dx - d mean))
            dvar = None
            if dx is not None:
                dims = reduce_dims(x)
                d_xmu = d_xmu - channel_view(d_xmu.mean(dims), x)
                dvar = 2 * (xmu * d_xmu).mean(dims)
        elif dmean is not None:
            d_xmu = d_xmu - channel_view(dmean, x)
        d_xhat = d_xmu * channel_view(invstd, x)
        if dvar is not None:  # d invstd = -invstd^3 / 2 * d var
            d_xhat = d_xhat - xmu * channel_view(invstd * invstd * invstd * dvar / 2, x)
        dy = d_xhat if weight is None else d_xhat * channel_view(weight.to(dt), x)
        if dweight is not None:
            dy = dy + xmu * channel_view(invstd * dweight.to(dt), x)
        if dbias is not None:
            dy = dy + channel_view(dbias.to(dt), x)
        return dy.expand_as(xmu).to(x.dtype)


def closed_form_grads(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    eps: float,
    batch_statistics: bool,
    needs: tuple[bool, bool, bool],
    bias_dtype: torch.dtype | None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dweight, dbias)`` by the formulas in the module docstring (None where not
    needed). Differentiable: under grad mode (double backward) the batch statistics are
    recomputed from ``x`` so that the graph reaches ``x`` through them too."""
    need_x, need_w, need_b = needs
    dims = reduce_dims(x)
    xc = x.to(invstd.dtype)
    g = dy.to(invstd.dtype)
    if batch_statistics and torch.is_grad_enabled():
        var, mean = torch.var_mean(xc, dim=dims, correction=0)
        invstd = torch.rsqrt(var + eps)
    xmu = xc - channel_view(mean, x)
    sum_dy = g.sum(dims)
    sum_dy_xmu = (g * xmu).sum(dims) if (need_w or (need_x and batch_statistics)) else None

    dx = dweight = dbias = None
    if need_x:
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
        if batch_statistics:
            n = x.numel() // x.shape[1]
            proj = invstd * invstd * sum_dy_xmu / n
            dx = (g - channel_view(sum_dy / n, x) - xmu * channel_view(proj, x))
            dx = dx * channel_view(scale, x)
        else:
            dx = g * channel_view(scale, x)
        dx = dx.to(x.dtype)
    if need_w and weight is not None:
        dweight = (sum_dy_xmu * invstd).to(weight.dtype)
    if need_b and bias_dtype is not None:
        dbias = sum_dy.to(bias_dtype)
    return dx, dweight, dbias
