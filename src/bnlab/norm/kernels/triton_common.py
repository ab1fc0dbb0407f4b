"""Batch-norm kernels in Triton, for GPUs (and Triton's CPU interpreter, in tests): what
the planar (``triton_planar``) and rows (``triton_rows``) kernels share.

Imported only when the Triton path runs (:mod:`bnlab.norm.gpu`), so the rest of bnlab
needs no Triton. Arithmetic is float32 whatever the input dtype; stores cast to the
destination's dtype.

Two layouts of a contiguous input:

* planar, (N, C, S) with S > 1 the product of the spatial dims: a channel is N runs of S
  contiguous elements. Tiles are (BLOCK_N rows, BLOCK_S columns) of one channel.
* rows, (N, C): a channel is a column. Tiles are (BLOCK_N rows, BLOCK_C channels).

Either way the grid's second axis splits the rows into ``parts``, each a program's work.

``stats`` is float32 (2, C): the mean, then ``invstd = 1 / sqrt(var + eps)``, written by
the forward kernels for the backward ones.

Statistics (``STATS``): ``PARTIALS`` combines per-part sums written by a ``*_sums`` kernel
(a large channel split over several programs), ``LOCAL`` computes them in the same program
(one part: one launch), ``RUNNING`` reads the running statistics (eval). Each lane of a
program's tile sums its values shifted by its own first value (:func:`lane_moments`); the
lanes, and then the parts, are combined by Chan et al.'s formula for merging means and sums
of squared deviations, whose terms are all positive. (A shift shared by the whole channel
cancelled in ``E[d^2] - E[d]^2`` when that one value lay far from the rest.) Means travel
as offsets from the channel's first value (``ref``), which parts store.
"""

from __future__ import annotations

import triton
import triton.language as tl

PARTIALS, LOCAL, RUNNING = 0, 1, 2


@triton.jit
def activate(y, ACT: tl.constexpr):
    """ACT 0: identity, 1: relu, 2: sigmoid."""
    if ACT == 1:
        y = tl.maximum(y, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays, as torch.relu
    elif ACT == 2:
        y = tl.sigmoid(y)
    return y


@triton.jit
def through_activation(g, pre, ACT: tl.constexpr):
    """The gradient ``g`` of the activation's output, taken back to its input ``pre``."""
    if ACT == 1:
        g = tl.where(pre <= 0.0, 0.0, g)  # a NaN passes the gradient, as in torch
    elif ACT == 2:
        s = tl.sigmoid(pre)
        g = g * s * (1.0 - s)
    return g

@triton.jit
def lane_count(extent, BLOCK: tl.constexpr):
    """How many of ``extent`` positions each of ``BLOCK`` lanes visits, stepping by BLOCK
    (lane i: positions i, i + BLOCK, ...)."""
    return tl.maximum(extent - tl.arange(0, BLOCK) + (BLOCK - 1), 0) // BLOCK


@triton.jit
def lane_moments(first, ref, cnt, s1, s2):
    """Each lane's mean, as an offset from ``ref``, and its sum of squared deviations (m2),
    from its ``cnt`` values' sums ``s1``, ``s2`` of ``d = x - first`` and ``d^2``, ``first``
    being the lane's first value (lanes without values: 0 and 0). Means are kept as offsets
    from one of the channel's values, as the sums of differences they come from, so a
    channel far from zero (1e4 + noise of 0.1) keeps their digits."""
    n = tl.maximum(cnt, 1.0)
    # propagate_nan: a NaN or inf in the input makes the variance NaN, as in torch
    m2 = tl.maximum(s2 - s1 * s1 / n, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return tl.where(cnt > 0, (first - ref) + s1 / n, 0.0), m2


@triton.jit
def merge_moments(cnt, off, m2, AXIS: tl.constexpr):
    """Groups of ``cnt`` values with mean offsets ``off`` and sums of squared deviations
    ``m2``, merged along ``AXIS`` (Chan et al.): the merged offset and m2."""
    mean = tl.sum(cnt * off, AXIS) / tl.maximum(tl.sum(cnt, AXIS), 1.0)
    dev = off - tl.expand_dims(mean, AXIS)
    return mean, tl.sum(m2 + cnt * dev * dev, AXIS)


@triton.jit
def part_rows(N, rows_per_part, BLOCK_P: tl.constexpr):
    """The rows of each of BLOCK_P parts of ``rows_per_part`` rows (0 past the last), float."""
    k = tl.arange(0, BLOCK_P)
    return tl.minimum(tl.maximum(N - k * rows_per_part, 0), rows_per_part) * 1.0


@triton.jit
def load_or(ptr, i, HAS: tl.constexpr, default):
    if HAS:
        return tl.load(ptr + i).to(tl.float32)
    return default
