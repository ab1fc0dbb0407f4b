"""Batch norm on bnlab's Triton kernels (``kernels/triton_*.py``), for CUDA tensors.

One launch forward and one backward when a channel is small enough for one program; two
each (partial sums over parts of every channel, then the normalization that combines them)
when it is not. Statistics, the running-stat update, the batch counter, the affine
transform and the activation all happen inside those launches. Same contract and saved
tensors as the reference :class:`~bnlab.norm.autograd.BatchNormFunction`; double backward
(and batched gradients) use the reference's differentiable closed form.

The autograd node is C++ (``kernels/triton_node.cpp``: the launches stay here, the node
calls back into :func:`_node_backward`), for less host time per call than an autograd
Function; :class:`TritonBatchNormFunction` runs where that node cannot be built.

Triton is imported on first use, so bnlab runs without it; under ``TRITON_INTERPRET=1``
the same kernels run on CPU tensors (slowly: the tests use this to check them anywhere).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import SimpleNamespace

import torch
from torch import Tensor

from .autograd import apply_statistics, channels_last_format, closed_form_grads, reduce_dims
from .gpu_plan import plan
from .kernels import triton_node

_has_storage = torch._C._has_storage
_increment_version = torch.autograd.graph.increment_version
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ACT_CODES = {None: 0, "relu": 1, "sigmoid": 2}
_ACTIVATIONS = tuple(_ACT_CODES)  # by code
MISSING = "Triton is not installed"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=1)
def _load() -> tuple[object | None, str]:
    if importlib.util.find_spec("triton") is None:
        return None, MISSING
    try:
        from .kernels import triton_common, triton_planar, triton_rows
    except Exception as err:  # a broken install: the reference path runs instead
        return None, f"importing Triton failed: {type(err).__name__}: {err}"
    kernels = SimpleNamespace(
        PARTIALS=triton_common.PARTIALS, LOCAL=triton_common.LOCAL,
        RUNNING=triton_common.RUNNING,
        planar_sums=triton_planar.planar_sums_kernel,
        planar_forward=triton_planar.planar_forward_kernel,
        planar_grad_sums=triton_planar.planar_grad_sums_kernel,
        planar_backward=triton_planar.planar_backward_kernel,
        rows_sums=triton_rows.rows_sums_kernel, rows_forward=triton_rows.rows_forward_kernel,
        rows_grad_sums=triton_rows.rows_grad_sums_kernel,
        rows_backward=triton_rows.rows_backward_kernel)
    return kernels, "Triton kernels for CUDA tensors"


def triton_ops():
    """The kernels module, or None where Triton cannot be imported."""
    return _load()[0]


def triton_status() -> str:
    """One line: whether the Triton kernels can run here, or why not."""
    module, reason = _load()
    if module is not None and interpreting():
        return "Triton's interpreter (TRITON_INTERPRET=1): CPU tensors too"
    return reason


def node_status() -> str:
    """One line: where the Triton path's C++ autograd node was loaded from, or why it was
    not (its autograd Function runs instead). Builds the node on first use."""
    return triton_node()[1]


def _kernel_shape(x: Tensor) -> tuple[int, int, int, torch.memory_format]:
    """``(n, c, s, format)``: the kernels see ``x`` as (n, c, s) in memory — planar (N, C,
    S) when contiguous, rows (N * S, C, 1) when channels-last — and ``format`` is the
    memory format gradients must share with it."""
    n, c = x.shape[0], x.shape[1]
    s = x.numel() // (n * c)
    if s > 1 and not x.is_contiguous():
        return n * s, c, 1, channels_last_format(x)
    return n, c, s, torch.contiguous_format


def triton_eligible(x: Tensor, params: tuple[Tensor | None, ...]) -> bool:
    """The Triton kernels take float32/float16/bfloat16 input on a CUDA device (any device
    under the interpreter), contiguous or channels-last, with contiguous (C,) tensors on the
    same device."""
    if x.dtype not in _DTYPES or type(x) not in (Tensor, torch.nn.Parameter):
        return False
    if not x.is_contiguous() and channels_last_format(x) is None:
        return False
    if not (x.is_cuda or interpreting()):
        return False
    device = x.get_device()  # an int (-1: CPU): torch.device objects are slow to compare
    for p in params:
        if p is not None and (p.get_device() != device or not p.is_contiguous()
                              or not p.is_floating_point()):
            return False
    return triton_ops() is not None


def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None,
            running_mean: Tensor | None, running_var: Tensor | None, batch_statistics: bool,
            momentum: float, eps: float, activation: str | None,
            counter: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(y, stats)`` of ``x`` (N, C, *), ``stats`` float32 (2, C) holding the mean and
    ``invstd``: batch statistics (moving the running ones when given, counting the batch in
    ``counter``) or the running ones."""
    k = triton_ops()
    n, c, s, _ = _kernel_shape(x)
    y = torch.empty_like(x)  # in x's memory format
    stats = torch.empty(2, c, device=x.device, dtype=torch.float32)
    p = plan(n, c, s, batch_statistics, 2048)
    stats_mode = k.LOCAL if batch_statistics else k.RUNNING
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None,
                 UPDATE=batch_statistics and running_mean is not None,
                 COUNT=counter is not None, ACT=_ACT_CODES[activation])
    # Absent tensors are passed as any pointer; the flags keep the kernels off them.
    w = x if weight is None else weight
    b = x if bias is None else bias
    rm = x if running_mean is None else running_mean
    rv = x if running_var is None else running_var
    cnt = stats if counter is None else counter
    part = stats
    if batch_statistics and p.parts > 1:
        stats_mode = k.PARTIALS
        part = torch.empty(2 * c * p.parts, device=x.device, dtype=torch.float32)
        if p.rows:
            k.rows_sums[p.grid](x, part, n, c, p.rows_per_part, BLOCK_N=p.block_n,
                                BLOCK_C=p.block_x, num_warps=p.warps)
        else:
            k.planar_sums[p.grid](x, part, n, c, s, p.rows_per_part, BLOCK_N=p.block_n,
                                  BLOCK_S=p.block_x, num_warps=p.warps)
    if p.rows:
        k.rows_forward[p.grid](
            x, y, w, b, rm, rv, stats, part, cnt, n, c, p.rows_per_part, momentum, eps,
            STATS=stats_mode, BLOCK_N=p.block_n, BLOCK_C=p.block_x, BLOCK_P=p.block_p,
            num_warps=p.warps, **flags)
    else:
        k.planar_forward[p.grid](
            x, y, w, b, rm, rv, stats, part, cnt, n, c, s, p.rows_per_part, momentum, eps,
            STATS=stats_mode, BLOCK_N=p.block_n, BLOCK_S=p.block_x, BLOCK_P=p.block_p,
            num_warps=p.warps, **flags)
    # The kernels wrote these in place behind autograd's back: bumped as in-place ops would
    # (as the other paths do), so a stale saved copy is an error, not a wrong gradient.
    if batch_statistics:
        for t in (counter, running_mean, running_var):
            if t is not None and not t.is_inference():
                _increment_version(t)
    return y, stats


def backward(dy: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None,
             stats: Tensor, batch_statistics: bool, activation: str | None,
             needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, Tensor | None,
                                                      Tensor | None]:
    """``(dx, dweight, dbias)`` (None where not needed) for the output gradient ``dy``."""
    k = triton_ops()
    n, c, s, memory_format = _kernel_shape(x)
    dy = dy.contiguous(memory_format=memory_format)
    need_x, need_w, need_b = needs
    dx = torch.empty_like(x) if need_x else None
    dw = torch.empty_like(weight) if weight is not None else None
    db = torch.empty_like(bias) if bias is not None else None
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, ACT=_ACT_CODES[activation])
    w = x if weight is None else weight
    b = x if bias is None else bias
    dx_arg = x if dx is None else dx
    dw_arg = stats if dw is None else dw
    db_arg = stats if db is None else db
    p = plan(n, c, s, True, 1024)
    part = stats
    if p.parts > 1:
        part = torch.empty(2 * c * p.parts, device=x.device, dtype=torch.float32)
        if p.rows:
            k.rows_grad_sums[p.grid](
                dy, x, w, b, stats, part, n, c, p.rows_per_part, BLOCK_N=p.block_n,
                BLOCK_C=p.block_x, num_warps=p.warps, **flags)
        else:
            k.planar_grad_sums[p.grid](
                dy, x, w, b, stats, part, n, c, s, p.rows_per_part, BLOCK_N=p.block_n,
                BLOCK_S=p.block_x, num_warps=p.warps, **flags)
    blocks = dict(BLOCK_N=p.block_n, BLOCK_P=p.block_p, num_warps=p.warps,
                  LOCAL_SUMS=p.parts == 1, BATCH_STATS=batch_statistics, NEED_DX=need_x)
    if p.rows:
        k.rows_backward[p.grid](dy, x, dx_arg, w, b, stats, part, dw_arg, db_arg, n, c,
                                p.rows_per_part, BLOCK_C=p.block_x, **blocks, **flags)
    else:
        k.planar_backward[p.grid](dy, x, dx_arg, w, b, stats, part, dw_arg, db_arg, n, c, s,
                                  p.rows_per_part, BLOCK_S=p.block_x, **blocks, **flags)
    return dx, (dw if need_w else None), (db if need_b else None)


def _backward(dy: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None,
              stats: Tensor, batch_statistics: bool, activation: str | None, eps: float,
              needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """Backward on the kernels; when it is itself differentiated (double backward) or ``dy``
    has no storage for them to read (batched gradients, as ``autograd.grad(...,
    is_grads_batched=True)`` passes: wrappers), the reference's closed form with
    differentiable tensor ops instead (they batch)."""
    if torch.is_grad_enabled() or not _has_storage(dy):
        return _differentiable_backward(dy, x, weight, bias, stats[0], stats[1],
                                        batch_statistics, activation, eps, needs)
    return backward(dy, x, weight, bias, stats, batch_statistics, activation, needs)


def _node_backward(dy, x, weight, bias, stats, batch_statistics, activation_code, need_x,
                   need_w, need_b, eps):
    """What the C++ node (``kernels/triton_node.cpp``) calls in backward."""
    return tuple(_backward(dy, x, weight, bias, stats, batch_statistics,
                           _ACTIVATIONS[activation_code], eps, (need_x, need_w, need_b)))


class TritonBatchNormFunction(torch.autograd.Function):
    """``activation((x - mean) * invstd * weight + bias)`` on the Triton kernels (where the
    C++ node cannot be built)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, batch_statistics, momentum,
                eps, activation, counter):
        y, stats = forward(x, weight, bias, running_mean, running_var, batch_statistics,
                           momentum, eps, activation, counter)
        ctx.save_for_backward(x, weight, bias, stats)
        ctx.batch_statistics = batch_statistics
        ctx.activation = activation
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, stats = ctx.saved_tensors
        grads = _backward(dy, x, weight, bias, stats, ctx.batch_statistics, ctx.activation,
                          ctx.eps, tuple(ctx.needs_input_grad[:3]))
        return (*grads, None, None, None, None, None, None, None)


def _differentiable_backward(dy, x, weight, bias, mean, invstd, batch_statistics, activation,
                             eps, needs):
    """The closed form with differentiable tensor ops; the activation's slope recomputed
    from statistics that, in training, are themselves recomputed from ``x``."""
    if activation is not None:
        xc = x.to(invstd.dtype)
        m, inv = mean, invstd
        if batch_statistics:
            var, m = torch.var_mean(xc, dim=reduce_dims(x), correction=0)
            inv = torch.rsqrt(var + eps)
        pre = apply_statistics(xc, m, inv, weight, bias)
        if activation == "relu":  # torch's relu gradient: differentiable (zero) in pre too
            dz = torch.ops.aten.threshold_backward(dy.to(pre.dtype), pre, 0)
        else:
            sig = torch.sigmoid(pre)
            dz = dy.to(pre.dtype) * (sig * (1 - sig))
        dy = dz.to(dy.dtype)
    return closed_form_grads(dy, x, mean, invstd, weight, eps, batch_statistics, needs,
                             None if bias is None else bias.dtype)


@functools.lru_cache(maxsize=1)
def _node():
    """The C++ node's module (its backward entry set), or None where it cannot be built."""
    module = triton_node()[0]
    if module is not None:
        module.set_backward(_node_backward)
    return module


def triton_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                      running_mean: Tensor | None, running_var: Tensor | None,
                      training: bool, momentum: float, eps: float,
                      activation: str | None = None,
                      num_batches_tracked: Tensor | None = None) -> Tensor:
    """``F.batch_norm``'s computation (inputs already validated) followed by
    ``activation``, on the Triton kernels; in training ``num_batches_tracked`` (when given)
    is incremented in place."""
    counter = num_batches_tracked if training else None
    if x.is_cuda and (index := x.get_device()) != torch.cuda.current_device():
        with torch.cuda.device(index):
            return _run(x, weight, bias, running_mean, running_var, training, momentum, eps,
                        activation, counter)
    return _run(x, weight, bias, running_mean, running_var, training, momentum, eps,
                activation, counter)


def _run(x, weight, bias, running_mean, running_var, training, momentum, eps, activation,
         counter):
    if not (torch.is_grad_enabled() and (x.requires_grad or _requires_grad(weight)
                                         or _requires_grad(bias))):
        # Nothing to differentiate: the launches alone.
        return forward(x, weight, bias, running_mean, running_var, training, momentum, eps,
                       activation, counter)[0]
    node = _node()
    if node is None:
        return TritonBatchNormFunction.apply(x, weight, bias, running_mean, running_var,
                                             training, momentum, eps, activation, counter)
    # The launches, then the C++ node recorded on the output (an autograd Function's call
    # costs more host time than a small layer's kernels).
    y, stats = forward(x, weight, bias, running_mean, running_var, training, momentum, eps,
                       activation, counter)
    node.attach(y, x, weight, bias, stats, training, _ACT_CODES[activation], eps)
    return y


def _requires_grad(t: Tensor | None) -> bool:
    return t is not None and t.requires_grad
