"""Load the fused CPU kernels once per process; report why when they cannot be had."""

from __future__ import annotations

import functools
from pathlib import Path

from .build import SOURCE, load_module, load_ops

FAST_ENTRY = Path(__file__).with_name("fast_entry.cpp")
TRITON_NODE = Path(__file__).with_name("triton_node.cpp")


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


@functools.lru_cache(maxsize=1)
def _load_fast_entry() -> tuple[object | None, str]:
    if cpu_ops() is None:
        return None, "needs the fused kernels"
    return load_module(FAST_ENTRY)


@functools.lru_cache(maxsize=1)
def batch_norm_op():
    """A callable for ``torch.ops.bnlab.batch_norm`` (its arguments, positionally): the
    fast entry (fast_entry.cpp: no boxed call, ~2 µs less per call) where it builds, else
    the op itself. Raises :class:`KernelUnavailable` when the fused kernels cannot be had."""
    ops = cpu_ops(required=True)
    module = _load_fast_entry()[0]
    return ops.batch_norm.default if module is None else module.batch_norm


def kernel_status() -> str:
    """One line: where the fused kernels were loaded from, or why they were not (and the
    same for their fast Python entry)."""
    return f"{_load()[1]}; fast entry: {_load_fast_entry()[1]}"


@functools.lru_cache(maxsize=1)
def triton_node() -> tuple[object | None, str]:
    """``(module, "loaded <path>")`` for the Triton path's C++ autograd node
    (triton_node.cpp), or ``(None, reason)`` where it cannot be built (the path then uses a
    torch.autograd.Function instead)."""
    return load_module(TRITON_NODE)
