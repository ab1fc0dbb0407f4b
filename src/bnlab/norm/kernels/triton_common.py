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
(one part: one launch), ``RUNNING`` reads the running statistics (eval). Sums are shifted by
the channel's first element, so ``E[d^2] - E[d]^2`` does not cancel.
"""

from __future__ import annotations

import triton
import triton.language as tl

PARTIALS, LOCAL, RUNNING = 0, 1, 2


@triton.jit
def activate(y, ACT: tl.constexpr):
    """ACT 0: identity, 1: relu, 2: sigmoid."""
    if ACT == 1:
        y = tl.maximum(y, 0.0)
    elif ACT == 2:
        y = tl.sigmoid(y)
    return y


@triton.jit
def through_activation(g, pre, ACT: tl.constexpr):
    """The gradient ``g`` of the activation's output, taken back to its input ``pre``."""
    if ACT == 1:
        g = tl.where(pre > 0.0, g, 0.0)
    elif ACT == 2:
        s = tl.sigmoid(pre)
        g = g * s * (1.0 - s)
    return g

@triton.jit
def load_or(ptr, i, HAS: tl.constexpr, default):
    if HAS:
        return tl.load(ptr + i).to(tl.float32)
    return default
