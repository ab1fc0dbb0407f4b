"""Batch-norm kernels in Triton for the planar layout, (N, C, S) with S > 1: grid
(C, parts), each program one channel's rows ``[p * rows_per_part, ...)``. See
:mod:`.triton_common` for the layouts and the statistics modes."""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import (
    activate,
    lane_count,
    lane_moments,
    load_or,
    merge_moments,
    part_rows,
    through_activation,
)


@triton.jit
def _planar_tile(c, n0, s0, n_end, C, S, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """Offsets and mask of the tile at row ``n0``, column ``s0`` of channel ``c``."""
    rows = n0 + tl.arange(0, BLOCK_N)
    cols = s0 + tl.arange(0, BLOCK_S)
    offs = (rows * C + c).to(tl.int64)[:, None] * S + cols[None, :]
    mask = (rows < n_end)[:, None] & (cols < S)[None, :]
    return offs, mask


@triton.jit
def _planar_moments(x_ptr, ref, c, n_start, n_end, C, S,
                    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """``(mean - ref, m2)`` of channel ``c``'s rows [n_start, n_end): m2 the sum of squared
    deviations from the mean (see :mod:`.triton_common`: lanes shifted by their own first
    value, combined exactly)."""
    offs, mask = _planar_tile(c, n_start, 0, n_end, C, S, BLOCK_N, BLOCK_S)
    first = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    for n0 in range(n_start, n_end, BLOCK_N):
        for s0 in range(0, S, BLOCK_S):
            offs, mask = _planar_tile(c, n0, s0, n_end, C, S, BLOCK_N, BLOCK_S)
            d = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - first
            d = tl.where(mask, d, 0.0)
            acc += d
            acc2 += d * d
    # values per lane: its rows times its columns
    cnt = (lane_count(n_end - n_start, BLOCK_N)[:, None]
           * lane_count(S, BLOCK_S)[None, :]).to(tl.float32)
    lane_off, lane_m2 = lane_moments(first, ref, cnt, acc, acc2)
    return merge_moments(tl.reshape(cnt, [BLOCK_N * BLOCK_S]),
                         tl.reshape(lane_off, [BLOCK_N * BLOCK_S]),
                         tl.reshape(lane_m2, [BLOCK_N * BLOCK_S]), 0)


@triton.jit
def _planar_grad_sums(dy_ptr, x_ptr, mean, scale, shift_b, c, n_start, n_end, C, S,
                      ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """``sum(g)`` and ``sum(g * (x - mean))`` over rows [n_start, n_end) of ``c``, with g
    the gradient at the batch norm's output (through the activation, recomputed)."""
    acc = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    for n0 in range(n_start, n_end, BLOCK_N):
        for s0 in range(0, S, BLOCK_S):
            offs, mask = _planar_tile(c, n0, s0, n_end, C, S, BLOCK_N, BLOCK_S)
            xm = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - mean
            g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = through_activation(g, xm * scale + shift_b, ACT)
            g = tl.where(mask, g, 0.0)
            acc += g
            acc2 += g * xm
    return tl.sum(tl.sum(acc, 1), 0), tl.sum(tl.sum(acc2, 1), 0)

@triton.jit
def planar_sums_kernel(x_ptr, part_ptr, N, C, S, rows_per_part,
                       BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """Grid (C, P): part[0, c, p], part[1, c, p] = the mean (as an offset from the channel's
    first value) and m2 of part p of channel c."""
    c = tl.program_id(0)
    p = tl.program_id(1)
    parts = tl.num_programs(1)
    n_start = p * rows_per_part
    n_end = tl.minimum(n_start + rows_per_part, N)
    ref = tl.load(x_ptr + c.to(tl.int64) * S).to(tl.float32)
    off, m2 = _planar_moments(x_ptr, ref, c, n_start, n_end, C, S, BLOCK_N, BLOCK_S)
    tl.store(part_ptr + c * parts + p, off)
    tl.store(part_ptr + (C + c) * parts + p, m2)


@triton.jit
def planar_forward_kernel(x_ptr, y_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, stats_ptr,
                          part_ptr, counter_ptr, N, C, S, rows_per_part, momentum, eps,
                          STATS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                          UPDATE: tl.constexpr, COUNT: tl.constexpr, ACT: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr):
    """Grid (C, P): normalize part p of channel c; program (c, 0) stores the statistics
    (mean, invstd), moves the running ones (UPDATE) and (c = 0) counts the batch."""
    c = tl.program_id(0)
    p = tl.program_id(1)
    parts = tl.num_programs(1)
    count = N * 1.0 * S
    if STATS == 2:
        mean = tl.load(rm_ptr + c).to(tl.float32)
        var = tl.load(rv_ptr + c).to(tl.float32)
    else:
        ref = tl.load(x_ptr + c.to(tl.int64) * S).to(tl.float32)
        if STATS == 1:
            off, m2 = _planar_moments(x_ptr, ref, c, 0, N, C, S, BLOCK_N, BLOCK_S)
        else:  # the parts' moments, combined as the lanes' were
            k = tl.arange(0, BLOCK_P)
            used = k < parts
            part_off = tl.load(part_ptr + c * parts + k, mask=used, other=0.0)
            m2s = tl.load(part_ptr + (C + c) * parts + k, mask=used, other=0.0)
            off, m2 = merge_moments(part_rows(N, rows_per_part, BLOCK_P) * S, part_off, m2s, 0)
        mean = ref + off
        var = m2 / count
    invstd = tl.rsqrt(var + eps)
    scale = load_or(w_ptr, c, HAS_W, 1.0) * invstd
    shift_b = load_or(b_ptr, c, HAS_B, 0.0)
    if p == 0:
        tl.store(stats_ptr + c, mean)
        tl.store(stats_ptr + C + c, invstd)
        if UPDATE:
            rm = tl.load(rm_ptr + c).to(tl.float32)
            rv = tl.load(rv_ptr + c).to(tl.float32)
            tl.store(rm_ptr + c, rm + momentum * (mean - rm))
            tl.store(rv_ptr + c, rv + momentum * (var * count / (count - 1.0) - rv))
        if COUNT:
            if c == 0:
                tl.store(counter_ptr, tl.load(counter_ptr) + 1)
    n_start = p * rows_per_part
    n_end = tl.minimum(n_start + rows_per_part, N)
    for n0 in range(n_start, n_end, BLOCK_N):
        for s0 in range(0, S, BLOCK_S):
            offs, mask = _planar_tile(c, n0, s0, n_end, C, S, BLOCK_N, BLOCK_S)
            v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = activate((v - mean) * scale + shift_b, ACT)
            tl.store(y_ptr + offs, y, mask=mask)


@triton.jit
def planar_grad_sums_kernel(dy_ptr, x_ptr, w_ptr, b_ptr, stats_ptr, part_ptr,
                            N, C, S, rows_per_part, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                            ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """Grid (C, P): part[0, c, p], part[1, c, p] = sum(g), sum(g * (x - mean)) of part p."""
    c = tl.program_id(0)
    p = tl.program_id(1)
    parts = tl.num_programs(1)
    mean = tl.load(stats_ptr + c)
    scale = load_or(w_ptr, c, HAS_W, 1.0) * tl.load(stats_ptr + C + c)
    shift_b = load_or(b_ptr, c, HAS_B, 0.0)
    n_start = p * rows_per_part
    n_end = tl.minimum(n_start + rows_per_part, N)
    s1, s2 = _planar_grad_sums(dy_ptr, x_ptr, mean, scale, shift_b, c, n_start, n_end, C, S,
                               ACT, BLOCK_N, BLOCK_S)
    tl.store(part_ptr + c * parts + p, s1)
    tl.store(part_ptr + (C + c) * parts + p, s2)


@triton.jit
def planar_backward_kernel(dy_ptr, x_ptr, dx_ptr, w_ptr, b_ptr, stats_ptr,
                           part_ptr, dw_ptr, db_ptr, N, C, S, rows_per_part,
                           LOCAL_SUMS: tl.constexpr, BATCH_STATS: tl.constexpr,
                           NEED_DX: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                           ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
                           BLOCK_P: tl.constexpr):
    """Grid (C, P): dx of part p of channel c; program (c, 0) stores dweight, dbias."""
    c = tl.program_id(0)
    p = tl.program_id(1)
    parts = tl.num_programs(1)
    count = N * 1.0 * S
    mean = tl.load(stats_ptr + c)
    invstd = tl.load(stats_ptr + C + c)
    scale = load_or(w_ptr, c, HAS_W, 1.0) * invstd
    shift_b = load_or(b_ptr, c, HAS_B, 0.0)
    if LOCAL_SUMS:
        s1, s2 = _planar_grad_sums(dy_ptr, x_ptr, mean, scale, shift_b, c, 0, N, C, S,
                                   ACT, BLOCK_N, BLOCK_S)
    else:
        k = tl.arange(0, BLOCK_P)
        s1 = tl.sum(tl.load(part_ptr + c * parts + k, mask=k < parts, other=0.0), 0)
        s2 = tl.sum(tl.load(part_ptr + (C + c) * parts + k, mask=k < parts, other=0.0), 0)
    if p == 0:
        if HAS_W:
            tl.store(dw_ptr + c, s2 * invstd)
        if HAS_B:
            tl.store(db_ptr + c, s1)
    if NEED_DX:
        g_mean = s1 / count
        proj = s2 * invstd * invstd / count
        n_start = p * rows_per_part
        n_end = tl.minimum(n_start + rows_per_part, N)
        for n0 in range(n_start, n_end, BLOCK_N):
            for s0 in range(0, S, BLOCK_S):
                offs, mask = _planar_tile(c, n0, s0, n_end, C, S, BLOCK_N, BLOCK_S)
                xm = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - mean
                g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                g = through_activation(g, xm * scale + shift_b, ACT)
                if BATCH_STATS:
                    g = g - g_mean - xm * proj
                tl.store(dx_ptr + offs, g * scale, mask=mask)
