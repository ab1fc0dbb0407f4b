"""Batch-norm kernels in Triton for the rows layout, (N, C): grid (cdiv(C, BLOCK_C), parts),
each program a block of BLOCK_C channels over rows ``[p * rows_per_part, ...)``. See
:mod:`.triton_common` for the layouts and the statistics modes."""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import (
    activate,
    lane_count,
    lane_moments,
    merge_moments,
    part_rows,
    through_activation,
)


@triton.jit
def _rows_tile(n0, c0, n_end, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Offsets and mask of the tile at row ``n0``, channel ``c0`` (rows below ``n_end``)."""
    rows = n0 + tl.arange(0, BLOCK_N)
    cols = c0 + tl.arange(0, BLOCK_C)
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    mask = (rows < n_end)[:, None] & (cols < C)[None, :]
    return offs, mask


@triton.jit
def _load_cols_or(ptr, cols, cmask, HAS: tl.constexpr, default):
    if HAS:
        return tl.load(ptr + cols, mask=cmask, other=default).to(tl.float32)
    return tl.full(cols.shape, default, tl.float32)


@triton.jit
def _saved_stats(stats_ptr, w_ptr, b_ptr, cols, cmask, C, HAS_W: tl.constexpr,
                 HAS_B: tl.constexpr):
    """A block of channels' saved (mean, invstd) and their affine ``scale``, ``shift``."""
    mean = tl.load(stats_ptr + cols, mask=cmask, other=0.0)
    invstd = tl.load(stats_ptr + C + cols, mask=cmask, other=0.0)
    scale = _load_cols_or(w_ptr, cols, cmask, HAS_W, 1.0) * invstd
    return mean, invstd, scale, _load_cols_or(b_ptr, cols, cmask, HAS_B, 0.0)


@triton.jit
def _rows_moments(x_ptr, ref, c0, n_start, n_end, C,
                  BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel: ``(mean - ref, m2)`` over rows [n_start, n_end), m2 the sum of squared
    deviations from the mean (see :mod:`.triton_common`: lanes shifted by their own first
    value, combined exactly)."""
    offs, mask = _rows_tile(n_start, c0, n_end, C, BLOCK_N, BLOCK_C)
    first = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs, mask = _rows_tile(n0, c0, n_end, C, BLOCK_N, BLOCK_C)
        d = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - first
        d = tl.where(mask, d, 0.0)
        acc += d
        acc2 += d * d
    cnt = tl.broadcast_to(lane_count(n_end - n_start, BLOCK_N)[:, None].to(tl.float32),
                          (BLOCK_N, BLOCK_C))
    lane_off, lane_m2 = lane_moments(first, ref[None, :], cnt, acc, acc2)
    return merge_moments(cnt, lane_off, lane_m2, 0)


@triton.jit
def _rows_grad_sums(dy_ptr, x_ptr, mean, scale, shift_b, c0, n_start, n_end, C,
                    ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel: ``sum(g)`` and ``sum(g * (x - mean))`` over [n_start, n_end), g the
    gradient at the batch norm's output (through the activation, recomputed)."""
    acc = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs, mask = _rows_tile(n0, c0, n_end, C, BLOCK_N, BLOCK_C)
        xm = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - mean[None, :]
        g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.where(mask, through_activation(g, xm * scale[None, :] + shift_b[None, :], ACT),
                     0.0)
        acc += g
        acc2 += g * xm
    return tl.sum(acc, 0), tl.sum(acc2, 0)


@triton.jit
def _combine(part_ptr, cols, cmask, C, parts, BLOCK_P: tl.constexpr):
    """The parts' two sums of each channel in ``cols``, added up."""
    k = tl.arange(0, BLOCK_P)
    m = cmask[:, None] & (k < parts)[None, :]
    s1 = tl.load(part_ptr + cols[:, None] * parts + k[None, :], mask=m, other=0.0)
    s2 = tl.load(part_ptr + (C + cols)[:, None] * parts + k[None, :], mask=m, other=0.0)
    return tl.sum(s1, 1), tl.sum(s2, 1)


@triton.jit
def _combine_moments(part_ptr, cols, cmask, N, C, parts, rows_per_part,
                     BLOCK_P: tl.constexpr):
    """Each channel's ``(mean - ref, m2)`` from its parts' (combined as the lanes' are)."""
    k = tl.arange(0, BLOCK_P)
    m = cmask[:, None] & (k < parts)[None, :]
    part_off = tl.load(part_ptr + cols[:, None] * parts + k[None, :], mask=m, other=0.0)
    m2s = tl.load(part_ptr + (C + cols)[:, None] * parts + k[None, :], mask=m, other=0.0)
    return merge_moments(part_rows(N, rows_per_part, BLOCK_P)[None, :], part_off, m2s, 1)


@triton.jit
def rows_sums_kernel(x_ptr, part_ptr, N, C, rows_per_part,
                     BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """part[0, c, p], part[1, c, p] = the mean (as an offset from the channel's first value)
    and m2 of part p of channel c."""
    p = tl.program_id(1)
    parts = tl.num_programs(1)
    c0 = tl.program_id(0) * BLOCK_C
    cols = c0 + tl.arange(0, BLOCK_C)
    cmask = cols < C
    n_start = p * rows_per_part
    ref = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    off, m2 = _rows_moments(x_ptr, ref, c0, n_start, tl.minimum(n_start + rows_per_part, N),
                            C, BLOCK_N, BLOCK_C)
    tl.store(part_ptr + cols * parts + p, off, mask=cmask)
    tl.store(part_ptr + (C + cols) * parts + p, m2, mask=cmask)


@triton.jit
def rows_forward_kernel(x_ptr, y_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, stats_ptr, part_ptr,
                        counter_ptr, N, C, rows_per_part, momentum, eps, STATS: tl.constexpr,
                        HAS_W: tl.constexpr, HAS_B: tl.constexpr, UPDATE: tl.constexpr,
                        COUNT: tl.constexpr, ACT: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Normalize part p of a block of channels; programs of part 0 store the statistics,
    move the running ones (UPDATE) and (the first block) count the batch."""
    pid = tl.program_id(0)
    p = tl.program_id(1)
    parts = tl.num_programs(1)
    c0 = pid * BLOCK_C
    cols = c0 + tl.arange(0, BLOCK_C)
    cmask = cols < C
    count = N * 1.0
    if STATS == 2:
        mean = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        var = tl.load(rv_ptr + cols, mask=cmask, other=1.0).to(tl.float32)
    else:
        ref = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        if STATS == 1:
            off, m2 = _rows_moments(x_ptr, ref, c0, 0, N, C, BLOCK_N, BLOCK_C)
        else:
            off, m2 = _combine_moments(part_ptr, cols, cmask, N, C, parts, rows_per_part,
                                       BLOCK_P)
        mean = ref + off
        var = m2 / count
    invstd = tl.rsqrt(var + eps)
    scale = _load_cols_or(w_ptr, cols, cmask, HAS_W, 1.0) * invstd
    shift_b = _load_cols_or(b_ptr, cols, cmask, HAS_B, 0.0)
    if p == 0:
        tl.store(stats_ptr + cols, mean, mask=cmask)
        tl.store(stats_ptr + C + cols, invstd, mask=cmask)
        if UPDATE:
            rm = tl.load(rm_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            rv = tl.load(rv_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            tl.store(rm_ptr + cols, rm + momentum * (mean - rm), mask=cmask)
            tl.store(rv_ptr + cols, rv + momentum * (var * count / (count - 1.0) - rv),
                     mask=cmask)
        if COUNT:
            if pid == 0:
                tl.store(counter_ptr, tl.load(counter_ptr) + 1)
    n_start = p * rows_per_part
    n_end = tl.minimum(n_start + rows_per_part, N)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs, mask = _rows_tile(n0, c0, n_end, C, BLOCK_N, BLOCK_C)
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = activate((v - mean[None, :]) * scale[None, :] + shift_b[None, :], ACT)
        tl.store(y_ptr + offs, y, mask=mask)


@triton.jit
def rows_grad_sums_kernel(dy_ptr, x_ptr, w_ptr, b_ptr, stats_ptr, part_ptr, N, C,
                          rows_per_part, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                          ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """part[0, c, p], part[1, c, p] = sum(g), sum(g * (x - mean)) of part p of channel c."""
    p = tl.program_id(1)
    parts = tl.num_programs(1)
    c0 = tl.program_id(0) * BLOCK_C
    cols = c0 + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mean, _, scale, shift_b = _saved_stats(stats_ptr, w_ptr, b_ptr, cols, cmask, C, HAS_W,
                                           HAS_B)
    n_start = p * rows_per_part
    s1, s2 = _rows_grad_sums(dy_ptr, x_ptr, mean, scale, shift_b, c0, n_start,
                             tl.minimum(n_start + rows_per_part, N), C, ACT, BLOCK_N, BLOCK_C)
    tl.store(part_ptr + cols * parts + p, s1, mask=cmask)
    tl.store(part_ptr + (C + cols) * parts + p, s2, mask=cmask)


@triton.jit
def rows_backward_kernel(dy_ptr, x_ptr, dx_ptr, w_ptr, b_ptr, stats_ptr, part_ptr, dw_ptr,
                         db_ptr, N, C, rows_per_part, LOCAL_SUMS: tl.constexpr,
                         BATCH_STATS: tl.constexpr, NEED_DX: tl.constexpr,
                         HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """dx of part p of a block of channels; programs of part 0 store dweight, dbias."""
    p = tl.program_id(1)
    parts = tl.num_programs(1)
    c0 = tl.program_id(0) * BLOCK_C
    cols = c0 + tl.arange(0, BLOCK_C)
    cmask = cols < C
    count = N * 1.0
    mean, invstd, scale, shift_b = _saved_stats(stats_ptr, w_ptr, b_ptr, cols, cmask, C,
                                                HAS_W, HAS_B)
    if LOCAL_SUMS:
        s1, s2 = _rows_grad_sums(dy_ptr, x_ptr, mean, scale, shift_b, c0, 0, N, C, ACT,
                                 BLOCK_N, BLOCK_C)
    else:
        s1, s2 = _combine(part_ptr, cols, cmask, C, parts, BLOCK_P)
    if p == 0:
        if HAS_W:
            tl.store(dw_ptr + cols, s2 * invstd, mask=cmask)
        if HAS_B:
            tl.store(db_ptr + cols, s1, mask=cmask)
    if NEED_DX:
        g_mean = s1 / count
        proj = s2 * invstd * invstd / count
        n_start = p * rows_per_part
        n_end = tl.minimum(n_start + rows_per_part, N)
        for n0 in range(n_start, n_end, BLOCK_N):
            offs, mask = _rows_tile(n0, c0, n_end, C, BLOCK_N, BLOCK_C)
            xm = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - mean[None, :]
            g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = through_activation(g, xm * scale[None, :] + shift_b[None, :], ACT)
            if BATCH_STATS:
                g = g - g_mean[None, :] - xm * proj[None, :]
            tl.store(dx_ptr + offs, g * scale[None, :], mask=mask)
