"""Targets 2-4: LeNet training with bnlab BN against torch BN and the notebook's approach.

2. training throughput, bnlab BN / torch BN, batch 64 and 256 (ratio of steps per second);
3. peak memory of one training step, bnlab BN / torch BN (each in a fresh process);
4. one epoch (training + test evaluation, real data), each in a fresh process: the
   notebook's approach (torchvision-style per-sample DataLoader + its hand-written BN) /
   ``bnlab train``, and ``bnlab train`` with bnlab BN / without BN; measured as a whole
   one-epoch run (data loading, checkpoint and plot included) and as the second epoch of a
   two-epoch run.

Run: ``python -m benchmarks.training [--repeats 5] [--skip-epoch | --only-epoch]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from bnlab.experiment import TrainConfig, run_training
from bnlab.host import freed_memory_kept
from bnlab.models import lenet
from bnlab.train import train_classify

from .notebook_bn import notebook_lenet
from .notebook_data import notebook_loaders
from .timing import Ratio, interleaved_ratio


def training_step(model: nn.Module, batch: int, seed: int = 0, fused: bool = False):
    """A closure running one AdamW step of ``model`` on a fixed random batch (``fused``:
    torch's fused AdamW, as ``bnlab train`` builds it)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01,
                            fused=True if fused else None)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def throughput(repeats: int) -> list[tuple[int, Ratio]]:
    rows = []
    for batch in (64, 256):
        torch.manual_seed(0)
        ours = training_step(lenet("bnlab"), batch)
        theirs = training_step(lenet("torch"), batch)
        rows.append((batch, interleaved_ratio(ours, theirs, repeats=repeats, iters=30)))
    return rows


PEAK_SCRIPT = """
import json, sys, torch
from benchmarks.training import training_step
from bnlab.models import lenet
from bnlab.memory import GPUMemoryManager
torch.manual_seed(0)
step = training_step(lenet(sys.argv[1]), int(sys.argv[2]))
for _ in range(3):
    step()
mm = GPUMemoryManager("cpu")
mm.reset_peak()
base = mm.current()
step()
print(json.dumps({"peak": mm.peak() - base}))
"""


def step_peak(norm: str, batch: int) -> int:
    """Peak RSS growth of one training step, in a fresh process. A fixed small mmap
    threshold makes every tensor its own mapping, so RSS follows live tensor memory."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, norm, str(batch)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def peak_memory(repeats: int) -> list[tuple[int, list[float], int, int]]:
    """Per batch size: the per-repeat ratios, and the smallest peak of each (the Python
    interpreter's own allocations add up to ~0.4 MiB of noise to single readings)."""
    rows = []
    for batch in (64, 256):
        ratios, ours, theirs = [], [], []
        for _ in range(max(3, repeats)):
            a, b = step_peak("bnlab", batch), step_peak("torch", batch)
            ours.append(a)
            theirs.append(b)
            ratios.append(a / b)
        rows.append((batch, ratios, min(ours), min(theirs)))
    return rows


def notebook_run(epochs: int) -> tuple[float, list[float]]:
    """The notebook's way: its hand-written BN LeNet fed by torchvision-style per-sample
    DataLoaders (bnlab's harness runs the loop, as the notebook's helper does). Returns the
    wall time of the whole run (opening the dataset and building the model included, as
    for ``bnlab train``) and each epoch's training + evaluation seconds."""
    start = time.perf_counter()
    loaders = notebook_loaders(64)
    torch.manual_seed(0)
    model = notebook_lenet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    history = train_classify(model, *loaders, opt, nn.CrossEntropyLoss(), epochs,
                             progress=False)
    return time.perf_counter() - start, history.column("seconds")


def bnlab_train_run(norm: str, epochs: int) -> tuple[float, list[float]]:
    """``bnlab train --epochs EPOCHS --norm NORM`` after its imports: the process settings
    the command applies, loading the data, building the model, training and evaluation,
    checkpoints, metrics and plot. Returns the whole run's wall time and each epoch's
    training + evaluation seconds."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        with freed_memory_kept():
            result = run_training(TrainConfig(norm=norm, epochs=epochs, download=False), out,
                                  progress=False)
        return time.perf_counter() - start, result.history.column("seconds")


# Imports are not timed, torch._dynamo's included: every torch optimizer imports it when
# the first one is built (~1.3 s here), whoever trains.
EPOCH_SCRIPT = """
import json, sys
import torch._dynamo
from benchmarks.training import bnlab_train_run, notebook_run
which, epochs = sys.argv[1], int(sys.argv[2])
run, per_epoch = notebook_run(epochs) if which == "notebook" else bnlab_train_run(which, epochs)
print(json.dumps({"run": run, "epochs": per_epoch}))
"""


def run_in_fresh_process(which: str, epochs: int) -> dict:
    """One run in a new interpreter (imports not timed), so that no run inherits another's
    process settings, caches or heap, as a user's run would not."""
    out = subprocess.run([sys.executable, "-c", EPOCH_SCRIPT, which, str(epochs)],
                         capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    return json.loads(out.stdout.strip().splitlines()[-1])


VARIANTS = ("notebook", "bnlab", "none")


def end_to_end(repeats: int) -> dict[str, dict[str, list[float]]]:
    """Notebook approach (its BN, per-sample DataLoader, default AdamW) against ``bnlab
    train`` with bnlab BN and without BN, each in a fresh process, interleaved:
    ``"run"``: a whole one-epoch run; ``"epoch"``: the second epoch (training + test
    evaluation) of a two-epoch run, once the one-off costs are paid."""
    runs: dict[str, dict[str, list[float]]] = {v: {"run": [], "epoch": []} for v in VARIANTS}
    for r in range(repeats):
        order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
        for which in order:
            runs[which]["run"].append(run_in_fresh_process(which, 1)["run"])
            runs[which]["epoch"].append(run_in_fresh_process(which, 2)["epochs"][1])
    return runs


def _summary(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-epoch", action="store_true", help="skip target 4 (minutes)")
    parser.add_argument("--only-epoch", action="store_true", help="run target 4 alone")
    args = parser.parse_args(argv)
    with freed_memory_kept():  # as bnlab's commands do (bnlab.host)
        _run(args)


def _run(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if not args.only_epoch:
        memory_and_throughput(args.repeats)
    if not args.skip_epoch:
        epoch_table(args.repeats)


def memory_and_throughput(repeats: int) -> None:
    print("Target 2: LeNet-BN training steps, time bnlab / torch (<= 1.0 means bnlab is "
          "at least as fast)")
    print("| batch | bnlab ms/step | torch ms/step | ratio min / median / max | target |")
    print("|---|---|---|---|---|")
    for batch, r in throughput(repeats):
        print(f"| {batch} | {r.candidate_s * 1e3:.2f} | {r.baseline_s * 1e3:.2f} | {r.summary} "
              "| <= 1.0 |")
    print("\nTarget 3: peak memory of one training step, bnlab / torch")
    print("| batch | bnlab MiB (min) | torch MiB (min) | min / min | per-repeat ratios min / "
          "median / max | target |")
    print("|---|---|---|---|---|---|")
    for batch, ratios, ours, theirs in peak_memory(repeats):
        print(f"| {batch} | {ours / 2**20:.2f} | {theirs / 2**20:.2f} | {ours / theirs:.2f} | "
              f"{_summary(ratios)} | <= 1.0 |")


def epoch_table(repeats: int) -> None:
    runs = end_to_end(max(3, repeats))
    print("\nTarget 4: one epoch (batch 64, real data, training + test evaluation), seconds")
    print("| measured | notebook approach | bnlab train, bnlab BN | bnlab train, no BN | "
          "notebook / bnlab | bnlab / no-BN |")
    print("|---|---|---|---|---|---|")
    labels = {"run": "a one-epoch run, whole", "epoch": "epoch 2 of a two-epoch run"}
    for key, label in labels.items():
        nb, ours, none = (runs[v][key] for v in VARIANTS)
        speedup = [a / b for a, b in zip(nb, ours)]
        overhead = [b / c for b, c in zip(ours, none)]
        print(f"| {label} | {_summary(nb)} | {_summary(ours)} | {_summary(none)} | "
              f"{_summary(speedup)} (target >= 2.5) | {_summary(overhead)} (target <= 1.2) |")
    # The same comparison without fresh processes, data or evaluation: training steps of
    # both nets alternating in this process, so the machine's slow phases hit both alike.
    torch.manual_seed(0)
    steps = interleaved_ratio(training_step(lenet("bnlab"), 64, fused=True),
                              training_step(lenet("none"), 64, fused=True),
                              repeats=max(7, repeats), iters=100)
    print(f"\nLeNet training steps alone (batch 64, fused AdamW), bnlab BN / no BN, "
          f"interleaved in one process: {steps.candidate_s * 1e3:.2f} / "
          f"{steps.baseline_s * 1e3:.2f} ms, ratio {steps.summary}")


if __name__ == "__main__":
    main()
