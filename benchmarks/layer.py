"""Target 1: one batch-norm layer, forward + backward in training mode, bnlab vs torch.

Run: ``python -m benchmarks.layer [--repeats 11] [--quick]``. Per repeat each side runs 400
iterations on shapes under 10^5 elements ((64, 120), (64, 84), (64, 16, 8, 8)), 50 on
(64, 6, 24, 24) and 3 on the large one.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import bnlab
from bnlab.host import freed_memory_kept

from .timing import interleaved_ratio

SHAPES = [(64, 6, 24, 24), (64, 16, 8, 8), (64, 120), (64, 84), (256, 64, 56, 56)]
TARGETS = {(256, 64, 56, 56): 1.0}  # every other shape: 0.8


def layer_pair(shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    channels = shape[1]
    if len(shape) == 2:
        return bnlab.BatchNorm1d(channels), nn.BatchNorm1d(channels)
    return bnlab.BatchNorm2d(channels), nn.BatchNorm2d(channels)


def step_fn(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    def step() -> None:
        x.grad = None
        layer(x).backward(dy)

    return step


def run(repeats: int, quick: bool) -> list[dict]:
    rows = []
    for shape in SHAPES:
        big = shape[0] * shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1) > 10**7
        if quick and big:
            continue
        ours, theirs = layer_pair(shape)
        x = torch.randn(shape, requires_grad=True)
        dy = torch.randn(shape)
        # Each timed chunk runs for ~10 ms or more, so a scheduler hiccup cannot dominate it.
        small = x.numel() < 10**5
        iters = 3 if big else (400 if small else 50)
        r = interleaved_ratio(step_fn(ours, x, dy), step_fn(theirs, x, dy),
                              repeats=repeats, iters=iters)
        rows.append({"shape": shape, "ratio": r, "target": TARGETS.get(shape, 0.8)})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| shape | bnlab ms | torch ms | bnlab/torch min / median / max | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        r = row["ratio"]
        print(f"| {row['shape']} | {r.candidate_s * 1e3:.3f} | {r.baseline_s * 1e3:.3f} | "
              f"{r.summary} | <= {row['target']} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="skip the (256,64,56,56) shape")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with freed_memory_kept():  # as bnlab's commands do (bnlab.host)
        print_table(run(args.repeats, args.quick))


if __name__ == "__main__":
    main()
