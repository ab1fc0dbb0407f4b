"""``bnlab selfcheck``: bnlab's batch norm against torch's on random data, in one table."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from .. import norm
from ..models.kernels import layer_kernel_status
from ..norm.gpu import node_status, triton_status
from ..norm.kernels import kernel_status
from .parser import non_negative_float, positive_int, seed_int

CASES = [
    ("BatchNorm1d", (64, 120)),
    ("BatchNorm1d", (16, 8, 10)),
    ("BatchNorm2d", (64, 6, 24, 24)),
    ("BatchNorm3d", (8, 4, 5, 6, 7)),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "selfcheck",
        help="check bnlab batch norm against torch.nn.BatchNorm (forward, grads, stats)",
    )
    p.add_argument("--steps", type=positive_int, default=5, help="training steps per case")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed")
    p.add_argument("--tol", type=non_negative_float, default=1e-5,
                   help="largest allowed relative difference")
    p.set_defaults(handler=run)


def max_difference(name: str, shape: tuple[int, ...], steps: int, seed: int) -> float:
    """Largest |bnlab - torch| / max(1, |torch|) over outputs, grads and running stats."""
    gen = torch.Generator().manual_seed(seed)
    ours, theirs = getattr(norm, name)(shape[1]), getattr(nn, name)(shape[1])
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5, generator=gen)
        ours.bias.uniform_(-0.5, 0.5, generator=gen)
    theirs.load_state_dict(ours.state_dict())
    worst = 0.0
    for training in [True] * steps + [False]:
        ours.train(training)
        theirs.train(training)
        x = torch.randn(shape, generator=gen) * 2 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        dy = torch.randn(shape, generator=gen)
        ya.backward(dy)
        yb.backward(dy)
        pairs = [(ya, yb), (xa.grad, xb.grad), (ours.weight.grad, theirs.weight.grad),
                 (ours.bias.grad, theirs.bias.grad), (ours.running_mean, theirs.running_mean),
                 (ours.running_var, theirs.running_var)]
        # Relative to the reference's scale: grads of weight/bias are sums of many terms.
        worst = max(worst, *((a - b).abs().max().item() / max(1.0, b.abs().max().item())
                             for a, b in pairs))
    return worst


def run(args: argparse.Namespace) -> int:
    # Which kernels the CPU cases below ran on, and what CUDA tensors would run on.
    gpu = "no CUDA device"
    if torch.cuda.is_available():
        gpu = f"{triton_status()} (autograd node: {node_status()})"
    layers = "; ".join(f"{name}: {status}" for name, status in layer_kernel_status().items())
    print(f"bnlab kernels: {kernel_status()}; LeNet's layers: {layers}; GPU: {gpu}\n")
    print("| layer | input shape | max difference vs torch (relative) |")
    print("|---|---|---|")
    failed = False
    for name, shape in CASES:
        diff = max_difference(name, shape, args.steps, args.seed)
        failed |= not diff <= args.tol
        print(f"| {name} | {tuple(shape)} | {diff:.2e} |")
    print("FAILED: bnlab differs from torch" if failed else "OK: bnlab matches torch.nn.BatchNorm")
    return 1 if failed else 0
