"""Target 5: one batch-norm layer on a CUDA GPU, forward + backward in training mode,
bnlab (its Triton kernels) vs torch (cuDNN or torch's own CUDA kernels, as torch picks).

Run: ``python -m benchmarks.gpu [--repeats 7]``. Two timings per shape, interleaved:

* eager: wall time per iteration of ``layer(x).backward(dy)`` in a loop, synchronized at
  the ends (at small shapes this is the host's launch overhead, not the GPU's);
* graph: the same iterations captured in one CUDA graph and replayed, timed with CUDA
  events — the GPU's own time, launch overhead removed for both sides alike.

Also printed: the first call's time (Triton compiles its kernels then; cached on disk
afterwards), a parity check against torch, and the GPU kernels each side launches.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

import bnlab
from bnlab.norm import gpu
from bnlab.norm.gpu import node_status, triton_status

from . import timing
from .layer import SHAPES

TARGET = 1.0


def layer_pair(shape: tuple[int, ...], device: str) -> tuple[nn.Module, nn.Module]:
    channels = shape[1]
    if len(shape) == 2:
        return bnlab.BatchNorm1d(channels, device=device), nn.BatchNorm1d(channels, device=device)
    return bnlab.BatchNorm2d(channels, device=device), nn.BatchNorm2d(channels, device=device)


def step_fn(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        layer(x).backward(dy)

    return step


def eager_seconds(step: Callable[[], None], iters: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def captured(step: Callable[[], None], iters: int) -> torch.cuda.CUDAGraph:
    """``iters`` calls of ``step`` in one CUDA graph (after a warm-up on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            step()
    return graph


def graph_seconds(graph: torch.cuda.CUDAGraph, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def interleaved(ours: Callable[[], float], theirs: Callable[[], float],
                repeats: int) -> tuple[list[float], float, float]:
    """(ratios ours/theirs per repeat, median seconds of ours, of theirs); order flips."""
    r = timing.interleaved(ours, theirs, repeats)
    return r.ratios, r.candidate_s, r.baseline_s


def parity(ours: nn.Module, theirs: nn.Module, shape: tuple[int, ...],
           memory_format: torch.memory_format = torch.contiguous_format) -> float:
    """Largest |difference| of outputs and input gradients over one training step."""
    x = torch.randn(shape, device="cuda").contiguous(memory_format=memory_format)
    dy = torch.randn(shape, device="cuda")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    ya.backward(dy)
    yb.backward(dy)
    assert "Triton" in ya.grad_fn.name(), f"bnlab did not take the Triton path: {ya.grad_fn}"
    return max((ya - yb).abs().max().item(), (xa.grad - xb.grad).abs().max().item())


def kernel_names(step: Callable[[], None]) -> list[str]:
    """The GPU kernels one call of ``step`` launches, with their GPU time in µs."""
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        device_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if device_us:
            rows.append(f"{e.key[:60]} {device_us:.1f}us")
    return rows


def measure(shape: tuple[int, ...], repeats: int,
            memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    big = torch.Size(shape).numel() > 10**7
    torch.manual_seed(0)
    ours, theirs = layer_pair(shape, "cuda")
    x = torch.randn(shape, device="cuda").contiguous(memory_format=memory_format)
    x.requires_grad_()
    dy = torch.randn(shape, device="cuda").contiguous(memory_format=memory_format)
    mine, torchs = step_fn(ours, x, dy), step_fn(theirs, x, dy)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    mine()
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    err = parity(*layer_pair(shape, "cuda"), shape, memory_format)
    iters = 20 if big else 200
    eager = interleaved(lambda: eager_seconds(mine, iters),
                        lambda: eager_seconds(torchs, iters), repeats)
    try:
        g_mine, g_torch = captured(mine, iters), captured(torchs, iters)
        graph = interleaved(lambda: graph_seconds(g_mine, iters),
                            lambda: graph_seconds(g_torch, iters), repeats)
    except RuntimeError as e:  # report the rest of the row
        print(f"{shape}: CUDA graph timing failed: {e}")
        graph = ([float("nan")], float("nan"), float("nan"))
    try:
        kernels = (kernel_names(mine), kernel_names(torchs))
    except Exception as e:  # the profiler's API moves between torch versions
        kernels = ([f"profiler failed: {e}"], [])
    label = shape if memory_format == torch.contiguous_format else f"{shape} channels-last"
    return {"shape": label, "eager": eager, "graph": graph, "first_s": first_s,
            "max_abs_diff": err, "kernels": kernels}


def print_table(rows: list[dict]) -> None:
    print("| shape | eager µs bnlab / torch | eager ratio min / median / max "
          "| graph µs bnlab / torch | graph ratio min / median / max | first call s "
          "| max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        e, g = row["eager"], row["graph"]
        print(f"| {row['shape']} | {e[1] * 1e6:.1f} / {e[2] * 1e6:.1f} | {timing.spread(e[0])} "
              f"| {g[1] * 1e6:.1f} / {g[2] * 1e6:.1f} | {timing.spread(g[0])} "
              f"| {row['first_s']:.2f} | {row['max_abs_diff']:.1e} |")
    print("\nGPU kernels per forward + backward (bnlab; torch):")
    for row in rows:
        ours, theirs = row["kernels"]
        print(f"- {row['shape']}: {'; '.join(ours)} || {'; '.join(theirs)}")


def per_call_us(fn: Callable[[], object], iters: int = 2000) -> float:
    """Host time per call of ``fn`` (launches queue up; synchronized at the ends)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


def overhead(shape: tuple[int, ...] = (64, 120)) -> None:
    """Where the host time of a small layer goes: each piece timed alone."""
    from bnlab.norm import functional as BF
    from bnlab.norm.kernels import triton_rows as k

    x = torch.randn(shape, device="cuda")
    c = shape[1]
    w, b = torch.ones(c, device="cuda"), torch.zeros(c, device="cuda")
    rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
    y, stats = torch.empty_like(x), torch.empty(2, c, device="cuda")
    args = (x, y, w, b, rm, rv, stats, stats, stats, shape[0], c, shape[0], 0.1, 1e-5)
    consts = dict(STATS=1, HAS_W=True, HAS_B=True, UPDATE=True, COUNT=False, ACT=0,
                  BLOCK_N=64, BLOCK_C=32, BLOCK_P=1)
    grid = (-(-c // 32), 1)
    compiled = k.rows_forward_kernel[grid](*args, **consts)
    direct = compiled[(grid[0], 1, 1)]
    ordered = (*args, *consts.values())
    ours, theirs = layer_pair(shape, "cuda")
    xg = x.clone().requires_grad_()
    pieces = {
        "torch.empty_like(x)": lambda: torch.empty_like(x),
        "Triton launch, kernel[grid](...)": lambda: k.rows_forward_kernel[grid](*args, **consts),
        "Triton launch, compiled kernel": lambda: direct(*ordered),
        "bnlab functional forward (no grad)": lambda: BF.batch_norm(x, rm, rv, w, b, True),
        "torch F.batch_norm forward (no grad)":
            lambda: torch.nn.functional.batch_norm(x, rm, rv, w, b, True),
        "bnlab module forward + backward": step_fn(ours, xg, x),
        "torch module forward + backward": step_fn(theirs, xg, x),
    }
    print(f"\nHost time per call at {shape} (µs):")
    with torch.no_grad():
        for name, fn in list(pieces.items())[:5]:
            try:
                print(f"- {name}: {per_call_us(fn):.1f}")
            except Exception as e:  # the compiled kernel's call convention varies
                print(f"- {name}: failed ({type(e).__name__}: {e})")
    for name, fn in list(pieces.items())[5:]:
        print(f"- {name}: {per_call_us(fn, 500):.1f}")
    node = gpu._node
    try:  # the autograd Function the path falls back to where its C++ node is not built
        gpu._node = lambda: None
        print(f"- bnlab module forward + backward, autograd Function: "
              f"{per_call_us(step_fn(ours, xg, x), 500):.1f}")
    finally:
        gpu._node = node


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--overhead", action="store_true",
                        help="also time the host-side pieces of a small layer's call")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu needs a CUDA GPU")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"cuDNN {torch.backends.cudnn.version()}; bnlab: {triton_status()} "
          f"(autograd node: {node_status()})")
    rows = [measure(shape, args.repeats) for shape in SHAPES]
    rows.append(measure(SHAPES[-1], args.repeats, torch.channels_last))
    print_table(rows)
    if args.overhead:
        overhead()


if __name__ == "__main__":
    main()
