"""Target 5's host side, measured without a GPU: the time bnlab's GPU path spends on the
host per layer call — its Python, its checks, its autograd node — with Triton's kernel
launches replaced by no-ops, against torch's own CPU layer at a tiny shape (where torch's
time too is almost all host: dispatch, autograd, a few µs of arithmetic).

On a GPU at LeNet's small shapes both sides are bound by this host time (benchmarks.md,
target 5), plus Triton's Python launcher for bnlab (not measured here) against ATen's C++
launches for torch. Rows: the Triton path with its C++ autograd node (the default), the
same with the torch.autograd.Function it falls back to, bnlab's fused CPU path (its C++
node and kernels, for scale) and torch. Min over interleaved rounds (the machine's noise
only ever adds time).

Run: ``python -m benchmarks.host [--rounds 20]``.
"""

from __future__ import annotations

import argparse
import os
from types import SimpleNamespace
from unittest import mock

import torch
from torch import nn

import bnlab
from bnlab.norm import gpu

from .gpu import step_fn
from .timing import time_call

SHAPE = (4, 3)


def _no_op_kernels() -> SimpleNamespace:
    """Stand-ins for norm/gpu.py's kernels: ``k.name[grid](...)`` does nothing."""
    no_op = type("NoOpKernel", (), {"__getitem__": lambda self, grid: lambda *a, **k: None})()
    names = ["planar_sums", "planar_forward", "planar_grad_sums", "planar_backward",
             "rows_sums", "rows_forward", "rows_grad_sums", "rows_backward"]
    return SimpleNamespace(PARTIALS=0, LOCAL=1, RUNNING=2, **dict.fromkeys(names, no_op))


# Each row: the kernel setting, whether the Triton path may use its C++ node, and the
# backward node its output must have (checked before timing: each row runs the path it names).
ROWS = {"bnlab Triton path, C++ node": ("triton", True, "BnlabTritonBatchNormBackward"),
        "bnlab Triton path, autograd Function": ("triton", False,
                                                 "TritonBatchNormFunctionBackward"),
        "bnlab fused CPU path": ("fused", False, "BnlabBatchNormBackward"),
        "torch.nn.BatchNorm1d (CPU)": (None, False, "NativeBatchNormBackward0")}


def measure(rounds: int, iters: int = 2000) -> dict[str, tuple[float, float]]:
    """Per row: (forward µs, forward + backward µs), each the minimum over ``rounds``."""
    node = gpu._node()
    x = torch.randn(SHAPE, requires_grad=True)
    dy = torch.randn(SHAPE)
    best = {name: [float("inf"), float("inf")] for name in ROWS}
    for round_ in range(rounds):
        for name, (kernel, use_node, node_name) in ROWS.items():
            layer = nn.BatchNorm1d(SHAPE[1]) if kernel is None else bnlab.BatchNorm1d(SHAPE[1])
            with mock.patch.dict(os.environ, {"BNLAB_KERNEL": kernel or "auto"}), \
                    mock.patch.object(gpu, "_node", lambda n=node if use_node else None: n):
                if round_ == 0 and layer(x).grad_fn.name() != node_name:
                    raise AssertionError(f"{name}: took {layer(x).grad_fn.name()}")
                forward = time_call(lambda m=layer: m(x), iters)
                step = time_call(step_fn(layer, x, dy), iters)
            best[name][0] = min(best[name][0], forward * 1e6)
            best[name][1] = min(best[name][1], step * 1e6)
    return {name: (f, s) for name, (f, s) in best.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--iters", type=int, default=2000, help="calls per timing")
    args = parser.parse_args(argv)
    if gpu._node() is None:  # (then the Triton path runs its Function: nothing to compare)
        print(f"skipped: the Triton path's C++ node is not built here ({gpu.node_status()})")
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Triton's kernels never run: the path is taken for CPU tensors as under its interpreter.
    loaded = _no_op_kernels(), "no-op kernels"
    try:
        with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1"}), \
                mock.patch.object(gpu, "_load", lambda: loaded):
            print(f"Triton path's autograd node: {gpu.node_status()}")
            results = measure(args.rounds, args.iters)
    finally:
        torch.set_num_threads(threads)
    base = results["torch.nn.BatchNorm1d (CPU)"][1]
    print(f"\nHost time per call at {SHAPE}, one thread (µs, min of {args.rounds} rounds):\n")
    print("| path | forward | forward + backward | vs torch |")
    print("|---|---|---|---|")
    for name, (forward, step) in results.items():
        print(f"| {name} | {forward:.1f} | {step:.1f} | {step / base:.2f} |")


if __name__ == "__main__":
    main()
