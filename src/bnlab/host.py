"""Process-wide settings for fast CPU training, applied by bnlab's commands while they run.

Nothing here runs on import: the library leaves the process as it finds it, and the CLI
(``bnlab train``, ``compare``, ...) and the benchmarks wrap their work in
:func:`freed_memory_kept`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

# glibc's mallopt parameters (malloc.h) and their documented defaults
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_DEFAULTS = ((_M_MMAP_THRESHOLD, 128 * 1024), (_M_TRIM_THRESHOLD, 128 * 1024),
             (_M_TOP_PAD, 128 * 1024))
KEEP_BYTES = 1 << 30
_KEEP = ((_M_MMAP_THRESHOLD, KEEP_BYTES), (_M_TRIM_THRESHOLD, KEEP_BYTES),
         (_M_TOP_PAD, 64 << 20))


def _mallopt(settings: tuple[tuple[int, int], ...]) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (macOS, Windows, musl without mallopt)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in settings)


@contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """While inside, glibc's malloc keeps freed blocks of up to 1 GiB for reuse instead of
    handing them back to the kernel; yields whether that took effect. On exit its
    thresholds go back to glibc's defaults (fixed at 128 KiB: glibc's adaptive
    threshold cannot be restored).

    Why: a training step frees and reallocates the same activation-sized blocks every
    iteration. By default glibc serves blocks over 128 KiB (LeNet's activations at batch 64
    are 0.1-2.4 MiB) with fresh ``mmap`` calls, so every step page-faults its activations
    back in: up to ~1,000 faults and ~1 ms of a ~3.5 ms step here, varying from run to run
    with glibc's adaptive threshold. Kept in the heap, the blocks are reused as they are (a
    caching allocator, like PyTorch's on CUDA); meanwhile the process's resident memory
    stays at its peak. ``BNLAB_KEEP_FREED_MEMORY=0`` leaves malloc alone; a no-op off glibc.
    """
    took = os.environ.get("BNLAB_KEEP_FREED_MEMORY", "1") != "0" and _mallopt(_KEEP)
    try:
        yield took
    finally:
        if took:
            _mallopt(_DEFAULTS)
