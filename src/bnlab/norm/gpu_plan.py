"""Launch plans for the Triton kernels (``norm/gpu.py`` launches them): how many programs
cover an (N, C, S) input, and the tile each one loops over. Pure integer arithmetic, cached
per shape."""

from __future__ import annotations

import functools
from typing import NamedTuple

# A channel of at most this many elements is one program's work (one launch, no partials).
LOCAL_LIMIT = 1 << 16
# Parts per channel aim for at least this many programs in all (a few per SM on big GPUs) ...
TARGET_PROGRAMS = 512
# ... each with at least this many elements.
MIN_PART = 1 << 13


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _planar_blocks(n: int, s: int, budget: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_S) of ~``budget`` elements for runs of length ``s``: columns a power
    of two dividing ``s`` where one is large enough, so no lane is masked off."""
    block_s = s & -s  # the largest power of two dividing s
    if block_s < 32:
        block_s = _next_pow2(s)
    block_s = min(block_s, budget)
    return max(1, min(budget // block_s, _next_pow2(n))), block_s


def _parts(n: int, columns: int, width: int, split: bool) -> int:
    """How many programs share the rows of each of ``columns`` column programs (a channel, or
    a block of channels), whose rows are ``width`` values wide. ``split``: for a reduction
    (one part while a column fits one program; else parts of at least MIN_PART values,
    aiming at TARGET_PROGRAMS programs in all); otherwise only to spread the work."""
    values = n * width
    if not split:
        return max(1, min(n, -(-values // MIN_PART)))
    if values <= LOCAL_LIMIT:
        return 1
    return max(1, min(n, -(-TARGET_PROGRAMS // columns), values // MIN_PART))


def _warps(block: int) -> int:
    return 8 if block >= 2048 else 4


class Plan(NamedTuple):
    """How the kernels cover an (N, C, S) input: ``parts`` programs per channel (planar)
    or per block of ``block_x`` channels (rows), each a loop over (block_n, block_x) tiles."""

    rows: bool
    grid: tuple[int, int]
    parts: int
    rows_per_part: int
    block_n: int
    block_x: int
    block_p: int
    warps: int


@functools.lru_cache(maxsize=512)
def plan(n: int, c: int, s: int, split: bool, budget: int) -> Plan:
    """The launch plan for (N, C, S) input (cached: it runs on every call). ``split``: parts
    are chosen for a reduction over each channel (else only to spread the work)."""
    rows = s == 1
    if rows:  # blocks of up to 32 channels, one tile budget both ways
        block_c = min(_next_pow2(c), 32)
        columns, width = -(-c // block_c), block_c
    else:  # one channel a column
        columns, width = c, s
    rows_per_part = -(-n // _parts(n, columns, width, split))
    parts = -(-n // rows_per_part)
    if rows:
        block_n, block_x = max(1, min(_next_pow2(rows_per_part), 2048 // block_c)), block_c
    else:
        block_n, block_x = _planar_blocks(rows_per_part, s, budget)
    return Plan(rows, (columns, parts), parts, rows_per_part, block_n, block_x,
                _next_pow2(parts), _warps(block_n * block_x))
