"""Load the fused CPU kernels once per process; report why when they cannot be had."""

from __future__ import annotations

import functools

from .build import SOURCE, load_ops


class KernelUnavailable(RuntimeError):
    """The fused kernels could not be built or loaded (the reason is the message)."""


@functools.lru_cache(maxsize=1)
def _load() -> tuple[object | None, str]:
    return load_ops(SOURCE, "bnlab")  # a failure means: use the reference path


def cpu_ops(required: bool = False):
    """``torch.ops.bnlab`` with the fused kernels, or None when they cannot be had
    (``required=True``: raise :class:`KernelUnavailable` with the reason instead)."""
    ops, reason = _load()
    if ops is None and required:
        raise KernelUnavailable(f"bnlab's fused CPU kernels are unavailable: {reason}")
    return ops


def kernel_status() -> str:
    """One line: where the fused kernels were loaded from, or why they were not."""
    return _load()[1]
