"""``train_classify``: the notebook's training loop, with its output, made exact and fast.

Per epoch: a tqdm bar ``Epoch k: ... it/s, accuracy=..., loss=...`` over the training
batches, then the lines ``Epoch: k, loss: L, acc: A`` and ``Epoch: k, test loss: L,
test acc: A`` (accuracies in percent, losses mean per sample), printed with ``print``.

The loop never waits for the device on a batch: loss sum, correct count and the first
non-finite batch are accumulated as device tensors and read only at *sync points* — every
``refresh_s`` seconds of wall time (also with the bar disabled) and at the epoch's end.

Non-finite loss: detected at the first sync point after the bad batch, so the optimizer
has by then taken the steps of the bad batch and of the batches run until that sync point
(at most ``refresh_s`` seconds of training, or the rest of the epoch if it ends first).
Training then stops with :class:`NonFiniteLossError` before evaluating or recording the
epoch and before ``on_epoch_end`` (so no checkpoint of those weights is written); the
weights are not usable afterwards. ``refresh_s=0`` syncs after every batch: the error then
comes right after the bad batch's step. A non-finite *test* loss (finite training losses,
weights grown past float range) stops training the same way, with
:class:`NonFiniteTestLossError`, before the epoch is recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from tqdm.auto import tqdm

from ..distributed import broadcast_buffers, is_main_process, unwrap
from ..memory import GPUMemoryManager
from .evaluate import (
    Batch,
    Criterion,
    accumulator_dtype,
    batch_loss,
    check_mean_reduction,
    evaluate,
    resolve_device,
    sum_over_processes,
    to_device,
)
from .history import EpochRecord, History

__all__ = ["MemoryMeter", "NonFiniteLossError", "NonFiniteTestLossError", "train_classify"]


class NonFiniteLossError(RuntimeError):
    """A training loss was nan or inf. ``epoch`` and ``batch`` are 1-based (``batch`` is
    the bad batch's position in its epoch, as the bar counts); ``steps_after`` counts the
    optimizer steps taken from the bad batch to detection; ``history`` holds the epochs
    completed before it."""

    def __init__(self, epoch: int, batch: int, detected_at: int) -> None:
        self.epoch = epoch
        self.batch = batch
        self.steps_after = detected_at - batch + 1
        self.history = History()
        super().__init__(
            f"non-finite loss (nan or inf) at epoch {epoch}, batch {batch}; training stopped "
            f"at batch {detected_at} after {self.steps_after} optimizer step(s) on non-finite "
            "gradients, so the current weights are unusable (lower the learning rate or check "
            "the input data, and restart or resume from the last checkpoint)"
        )

    def __reduce__(self):  # picklable (to cross processes) with its fields
        return _rebuild, (type(self), str(self), self.__dict__)


def _rebuild(cls: type, message: str, fields: dict) -> NonFiniteLossError:
    err = cls.__new__(cls)
    RuntimeError.__init__(err, message)
    err.__dict__.update(fields)
    return err


class NonFiniteTestLossError(NonFiniteLossError):
    """The test loss after epoch ``epoch`` was nan or inf although every training loss was
    finite (weights grown past float range): the epoch is not recorded."""

    def __init__(self, epoch: int, test_loss: float) -> None:
        RuntimeError.__init__(
            self,
            f"non-finite test loss ({test_loss}) after epoch {epoch}: the weights it ended with "
            "are unusable, so the epoch is not recorded (lower the learning rate, and restart "
            "or resume from the last checkpoint)")
        self.epoch, self.batch, self.steps_after = epoch, None, 0
        self.history = History()


class MemoryMeter(Protocol):
    """What the loop needs of :class:`bnlab.memory.GPUMemoryManager`."""

    def reset_peak(self) -> None: ...
    def peak(self) -> int: ...


EpochCallback = Callable[[EpochRecord, nn.Module, torch.optim.Optimizer], None]


class _EpochTotals:
    """Device-side sums of one training epoch; read them only at sync points."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=accumulator_dtype(device), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.samples = 0
        self.batches = 0

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        loss = loss.detach()
        self.loss_sum += loss.to(self.loss_sum.dtype) * y.shape[0]
        self.correct += (logits.detach().argmax(dim=1) == y).sum()
        # Record the first bad batch's index without reading the flag on the host.
        self.first_bad.masked_fill_(~torch.isfinite(loss) & (self.first_bad < 0), self.batches)
        self.samples += y.shape[0]
        self.batches += 1

    def sync(self, epoch: int) -> tuple[float, float]:
        """``(mean loss, accuracy %)`` so far; raises NonFiniteLossError if a loss was bad."""
        first_bad = int(self.first_bad.item())
        if first_bad >= 0:
            raise NonFiniteLossError(epoch, first_bad + 1, self.batches)
        return self.loss_sum.item() / self.samples, 100.0 * self.correct.item() / self.samples

    def reduce(self) -> None:
        """Replace the sums by their totals over all processes (one all-reduce)."""
        self.loss_sum, self.correct, self.samples = sum_over_processes(
            self.loss_sum, self.correct, self.samples)


def _num_batches(loader: Iterable[Batch], max_steps: int | None) -> int | None:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return max_steps
    return n if max_steps is None else min(n, max_steps)


@dataclass(frozen=True)
class _EpochRunner:
    """What stays the same from one training epoch to the next."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Criterion
    device: torch.device
    progress: bool
    max_steps: int | None
    refresh_s: float
    distributed: bool = False

    def run(self, loader: Iterable[Batch], epoch: int) -> tuple[float, float, int]:
        """One pass in train mode; returns (mean loss, accuracy %, samples)."""
        self.net.train()
        totals = _EpochTotals(self.device)
        batches = loader if self.max_steps is None else islice(loader, self.max_steps)
        # Updated by hand, not iterated: an exhausted tqdm iterator closes itself before the
        # final postfix could be set.
        bar = tqdm(
            total=_num_batches(loader, self.max_steps),
            desc=f"Epoch {epoch}",
            leave=True,
            dynamic_ncols=True,
            disable=not self.progress,
        )
        try:
            last_sync = time.perf_counter()
            for batch in batches:
                self._step(batch, totals)
                bar.update(1)
                now = time.perf_counter()
                if now - last_sync >= self.refresh_s:
                    last_sync = now
                    mean_loss, acc = totals.sync(epoch)
                    if self.progress:
                        bar.set_postfix(accuracy=acc, loss=mean_loss, refresh=False)
            if totals.samples == 0:
                raise ValueError(f"epoch {epoch}: the training loader yielded no samples")
            own_samples = totals.samples  # this process's (samples/s is per process)
            if self.distributed:
                totals.reduce()
            mean_loss, acc = totals.sync(epoch)
            if self.progress:
                bar.set_postfix(accuracy=acc, loss=mean_loss)
        finally:
            bar.close()
        return mean_loss, acc, own_samples

    def _step(self, batch: Batch, totals: _EpochTotals) -> None:
        X, y = to_device(batch, self.device)
        self.optimizer.zero_grad()
        logits = self.net(X)
        loss = batch_loss(self.criterion, logits, y)
        loss.backward()
        self.optimizer.step()
        totals.add(loss, logits, y)


def train_classify(
    net: nn.Module,
    train_loader: Iterable[Batch],
    test_loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    criterion: Criterion,
    num_epochs: int,
    *,
    device: torch.device | str | None = None,
    scheduler: LRScheduler | ReduceLROnPlateau | None = None,
    progress: bool = True,
    start_epoch: int = 1,
    on_epoch_end: EpochCallback | None = None,
    max_steps: int | None = None,
    refresh_s: float = 0.25,
    memory: MemoryMeter | None = None,
    distributed: bool = False,
) -> History:
    """Train ``net`` on ``train_loader`` and evaluate on ``test_loader`` after every epoch.

    Runs epochs ``start_epoch .. num_epochs`` inclusive (``num_epochs`` is the number of
    the last epoch, as Keras' ``epochs`` with ``initial_epoch``: a fresh run trains
    ``num_epochs`` epochs; a run resumed after epoch 4 passes ``start_epoch=5`` and the same
    ``num_epochs``; ``start_epoch > num_epochs`` runs nothing). Loaders yield ``(X, y)``
    with int64 labels (B,); ``criterion`` returns the batch-mean loss.

    ``device``: move ``net`` and each batch there; None: the device of ``net``'s
    parameters. ``scheduler``: ``step()`` once per epoch after evaluation
    (``ReduceLROnPlateau`` gets the test loss). ``on_epoch_end(record, net, optimizer)``
    runs after each completed epoch (e.g. to checkpoint). ``max_steps``: at most this many
    training batches per epoch. ``progress=False``: no bars (the lines still print).
    ``refresh_s``: seconds between sync points (bar postfix, non-finite check).
    ``memory``: peak-memory meter, default ``GPUMemoryManager(device)``.

    ``distributed``: this is one process of a data-parallel run (an initialized process
    group; ``net`` typically DDP-wrapped; ``train_loader``/``test_loader`` this rank's shards,
    every rank running the same number of training batches). Each epoch's sums are
    all-reduced once at its end, so the History is global and the same on every rank; before
    evaluating, rank 0's buffers (BN running statistics) are broadcast and the bare model
    evaluates this rank's test shard (all-reduced as well). Only rank 0 shows bars and prints
    the lines. Seconds, samples/s and peak memory are this process's; a non-finite loss is
    detected by the rank that computed it.

    Returns the :class:`History` of the epochs run. Raises :class:`NonFiniteLossError`
    on a nan/inf training loss (see the module docstring for the detection latency).
    """
    _check_args(num_epochs, start_epoch, max_steps, refresh_s)
    check_mean_reduction(criterion)
    if not distributed and _num_batches(test_loader, None) == 0:  # before an epoch is spent
        raise ValueError("test_loader holds no batches: nothing to evaluate after each epoch")
    device = resolve_device(net, device)
    memory = GPUMemoryManager(device) if memory is None else memory
    main = not distributed or is_main_process()
    runner = _EpochRunner(net, optimizer, criterion, device, progress and main, max_steps,
                          refresh_s, distributed)
    history = History()
    for epoch in range(start_epoch, num_epochs + 1):
        memory.reset_peak()
        start = time.perf_counter()
        try:
            train_loss, train_acc, samples = runner.run(train_loader, epoch)
        except NonFiniteLossError as err:
            err.history = history
            raise
        train_seconds = time.perf_counter() - start
        if main:
            print(f"Epoch: {epoch}, loss: {train_loss}, acc: {train_acc}", flush=True)
        eval_net = net
        if distributed:
            eval_net = unwrap(net)
            broadcast_buffers(eval_net)
        test_loss, test_acc = evaluate(eval_net, test_loader, criterion, device=device,
                                       distributed=distributed)
        if main:
            print(f"Epoch: {epoch}, test loss: {test_loss}, test acc: {test_acc}", flush=True)
        if not math.isfinite(test_loss):  # (the same value on every process: reduced)
            err = NonFiniteTestLossError(epoch, test_loss)
            err.history = history
            raise err
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            test_loss=test_loss,
            test_acc=test_acc,
            seconds=time.perf_counter() - start,
            samples_per_s=samples / train_seconds if train_seconds > 0 else float("inf"),
            peak_memory_bytes=int(memory.peak()),
        )
        history.append(record)
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(test_loss)
        elif scheduler is not None:
            scheduler.step()
        if on_epoch_end is not None:
            on_epoch_end(record, net, optimizer)
    return history


def _check_args(num_epochs: int, start_epoch: int, max_steps: int | None, refresh_s: float) -> None:
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 0:
        raise ValueError(f"num_epochs must be an integer >= 0, got {num_epochs!r}")
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 1:
        raise ValueError(f"start_epoch must be an integer >= 1, got {start_epoch!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)
                                  or max_steps < 1):
        raise ValueError(f"max_steps must be None or an integer >= 1, got {max_steps!r}")
    if isinstance(refresh_s, bool) or not isinstance(refresh_s, (int, float)) \
            or not refresh_s >= 0:
        raise ValueError(f"refresh_s must be a number of seconds >= 0, got {refresh_s!r}")
