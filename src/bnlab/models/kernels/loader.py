"""Load the models' kernels once per process (built like bnlab.norm's kernels).

Two libraries, each optional on its own: ``pool_kernels.cpp`` (torch.ops.bnlab_pool) and
``conv_kernels.cpp`` (torch.ops.bnlab_conv, which also needs the BLAS torch exports).
"""

from __future__ import annotations

import functools
from pathlib import Path

from ...norm.kernels.build import load_ops

SOURCES = {name: Path(__file__).with_name(f"{name}_kernels.cpp") for name in ("pool", "conv")}


@functools.cache
def _load(name: str) -> tuple[object | None, str]:
    return load_ops(SOURCES[name], f"bnlab_{name}")  # a failure means: use torch's layer


def pool_ops():
    """``torch.ops.bnlab_pool`` (2x2 average pooling), or None when it cannot be had."""
    return _load("pool")[0]


def conv_ops():
    """``torch.ops.bnlab_conv`` (stride-1 convolution), or None when it cannot be had."""
    return _load("conv")[0]


def layer_kernel_status() -> dict[str, str]:
    """Per library (``pool``, ``conv``): where it was loaded from, or why it was not."""
    return {name: _load(name)[1] for name in SOURCES}
