"""Data loading: one epoch of the default loader vs a DataLoader, against a LeNet epoch.

Run: ``python -m benchmarks.data_loader [--device cpu] [--repeats 5] [--workers 0] [--threads N]``.
Uses the installed Fashion-MNIST (see ``bnlab data info``); the decoded cache is put in a
temp dir (removed after) so the cold (first) and warm (cached) load times are both
measured. The loader's share of training is measured two ways: a bare loader epoch over a
training epoch, and the time spent inside the loader's ``next()`` during the training epoch
itself. Everything runs with freed memory kept for reuse, as ``bnlab train`` runs
(``bnlab.host``); the two loaders' epochs alternate in order, repeat by repeat.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from bnlab.data import FashionMNIST, load_data_fashion_mnist
from bnlab.host import freed_memory_kept

from .notebook_data import TorchvisionStyleFashionMNIST

BATCH = 64


def lenet() -> nn.Sequential:
    """The notebook's LeNet with torch's batch norm."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, 10),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def drain(batches: Iterable, device: torch.device) -> Callable[[], None]:
    """One epoch that moves every batch to ``device`` (as a training loop would)."""

    def epoch() -> None:
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return epoch


class TimedIter:
    """Wraps an iterable, adding the time spent in its ``next()`` to ``self.seconds``."""

    def __init__(self, batches: Iterable) -> None:
        self.batches, self.seconds = batches, 0.0

    def __iter__(self) -> Iterator:
        it = iter(self.batches)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield item


def train_epoch(batches: Iterable, device: torch.device) -> Callable[[], None]:
    torch.manual_seed(0)
    net = lenet().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        net.train()
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

    return epoch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def spread(samples: list[float]) -> str:
    return f"{min(samples):.3f} / {statistics.median(samples):.3f} / {max(samples):.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed per loader")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader num_workers")
    parser.add_argument("--train-epochs", type=int, default=2, help="LeNet epochs timed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    saved = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory(prefix="bnlab-bench-") as cache, freed_memory_kept():
        os.environ["XDG_CACHE_HOME"] = cache
        try:
            _measure(args, device)
        finally:
            if saved is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = saved


def _measure(args: argparse.Namespace, device: torch.device) -> None:
    cold = seconds(lambda: load_data_fashion_mnist(BATCH, device=device, seed=0), device)
    warm = seconds(lambda: load_data_fashion_mnist(BATCH, device=device, seed=0), device)
    train, _ = load_data_fashion_mnist(BATCH, device=device, seed=0)
    generator = torch.Generator().manual_seed(0)
    reference = DataLoader(FashionMNIST(train=True), batch_size=BATCH, shuffle=True,
                           generator=generator, num_workers=args.workers,
                           pin_memory=device.type == "cuda")

    ours, theirs = drain(train, device), drain(reference, device)
    ours(), theirs()  # warm-up
    ours_s, theirs_s = [], []
    for r in range(args.repeats):  # interleaved, in alternating order: drift hits both alike
        for run, times in ((ours, ours_s), (theirs, theirs_s))[:: 1 if r % 2 == 0 else -1]:
            times.append(seconds(run, device))
    # torchvision's FashionMNIST(transform=ToTensor()) as the notebook loads it (slow: 2 epochs)
    notebook = drain(DataLoader(TorchvisionStyleFashionMNIST(train=True), batch_size=BATCH,
                                shuffle=True, generator=generator), device)
    notebook_s = [seconds(notebook, device) for _ in range(2)]
    timed = TimedIter(train)
    step = train_epoch(timed, device)
    train_s, inside_s = [], []
    for _ in range(args.train_epochs):
        timed.seconds = 0.0
        train_s.append(seconds(step, device))
        inside_s.append(timed.seconds)

    o, tr = statistics.median(ours_s), statistics.median(train_s)
    share = statistics.median(i / t for i, t in zip(inside_s, train_s, strict=True))
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}")
    print(f"load_data_fashion_mnist: cold {cold:.2f} s (gunzip + verify + cache write), "
          f"warm {warm:.2f} s (from the decoded cache)")
    print(f"| one epoch, batch {BATCH} ({len(train)} batches) | seconds min / median / max |")
    print("|---|---|")
    print(f"| bnlab default loader ({args.repeats} epochs) | {spread(ours_s)} |")
    print(f"| DataLoader(FashionMNIST), num_workers={args.workers} ({args.repeats} epochs) "
          f"| {spread(theirs_s)} |")
    print(f"| DataLoader over a torchvision-style dataset (PIL + ToTensor per sample; 2 "
          f"epochs) | {spread(notebook_s)} |")
    print(f"| LeNet training epoch, torch BN, AdamW ({args.train_epochs} epochs) "
          f"| {spread(train_s)} |")
    print(f"default loader vs DataLoader (medians): {statistics.median(theirs_s) / o:.0f}x faster")
    print(f"default loader share of a LeNet epoch: {100 * o / tr:.2f}% (bare epoch / training "
          f"epoch), {100 * share:.2f}% (time inside next() while training); target < 2%")


if __name__ == "__main__":
    main()
