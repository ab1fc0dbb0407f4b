"""Evaluation of a classifier on a loader, and the device/mode helpers the loop shares.

A loader is any iterable of ``(X, y)`` batches: ``X`` the model's input, ``y`` int64
class labels (B,); the model returns class scores (B, C). The criterion returns the
batch-mean loss (``reduction="mean"``, as ``nn.CrossEntropyLoss()`` by default, without
class weights or an ``ignore_index`` of its own); means over a loader weight each batch by
its size, every label a sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..device import select_device
from ..distributed import all_reduce_sum

__all__ = ["Evaluation", "accumulator_dtype", "batch_loss", "eval_mode", "evaluate",
           "resolve_device", "sum_over_processes"]

Batch = tuple[Tensor, Tensor]
Criterion = nn.Module


class Evaluation(NamedTuple):
    """Result of :func:`evaluate`; unpacks as ``loss, acc = evaluate(...)``.

    ``loss``: mean per-sample loss over the loader. ``acc``: accuracy in percent.
    """

    loss: float
    acc: float


def resolve_device(net: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` (checked by :func:`bnlab.device.select_device`, so ``"auto"`` works;
    ``net`` is moved there) or, when None, where ``net``'s parameters live."""
    if device is not None:
        device = select_device(device)
        net.to(device)
        return device
    for tensor in net.parameters():
        return tensor.device
    for tensor in net.buffers():
        return tensor.device
    return torch.device("cpu")


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """Dtype of device-side loss sums: float64, except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


_DEFAULT_IGNORE_INDEX = -100  # nn.CrossEntropyLoss's and nn.NLLLoss's


def check_mean_reduction(criterion: Criterion) -> None:
    """Reject criteria that do not return a batch mean (their sums would be misweighted)."""
    reduction = getattr(criterion, "reduction", "mean")
    if reduction != "mean":
        raise ValueError(
            f"criterion must return the batch-mean loss (reduction='mean'), got {reduction!r}"
        )
    # (their mean divides by the summed weights of the batch's classes, or by the samples
    # not ignored, not by the batch's size)
    if isinstance(criterion, (nn.CrossEntropyLoss, nn.NLLLoss)):
        if criterion.weight is not None:
            raise ValueError("criterion must weight every sample alike: a class-weighted mean "
                             "(weight=...) cannot be summed into per-sample losses")
        if criterion.ignore_index != _DEFAULT_IGNORE_INDEX:
            raise ValueError(
                f"criterion must count every sample: ignore_index={criterion.ignore_index} "
                "leaves samples out of its mean (and accuracy here would count them)")


def batch_loss(criterion: Criterion, scores: Tensor, y: Tensor) -> Tensor:
    """``criterion(scores, y)``, checked: ``scores`` (B, C), ``y`` (B,) integer labels, and
    a loss of one value (what the loss and accuracy sums assume; otherwise they would
    broadcast into numbers that mean nothing)."""
    if (scores.dim() != 2 or y.dim() != 1 or y.shape[0] != scores.shape[0]
            or y.is_floating_point()):
        raise ValueError(f"expected (B, C) class scores and (B,) integer labels, got scores "
                         f"of shape {tuple(scores.shape)} and {y.dtype} labels of shape "
                         f"{tuple(y.shape)}")
    loss = criterion(scores, y)
    if loss.dim() != 0:
        raise ValueError(f"criterion must return one batch-mean loss, got shape "
                         f"{tuple(loss.shape)}")
    return loss


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own previous mode on exit."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for module, training in modes:
            module.training = training


def to_device(batch: Batch, device: torch.device) -> Batch:
    """An ``(X, y)`` pair of tensors moved to ``device``; ValueError for other batches."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2
            and all(isinstance(t, Tensor) for t in batch)):
        raise ValueError(f"a batch must be an (X, y) pair of tensors, got "
                         f"{type(batch).__name__} {_describe(batch)}")
    X, y = batch
    return X.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _describe(batch: object) -> str:
    if isinstance(batch, (tuple, list)):
        return "of " + ", ".join(type(item).__name__ for item in batch)
    return ""


def sum_over_processes(
    loss_sum: Tensor, correct: Tensor, samples: int
) -> tuple[Tensor, Tensor, int]:
    """``(loss_sum, correct, samples)`` summed over every process (one all-reduce)."""
    totals = torch.stack([loss_sum, correct.to(loss_sum.dtype),
                          torch.tensor(samples, dtype=loss_sum.dtype, device=loss_sum.device)])
    all_reduce_sum(totals)
    return totals[0], totals[1].to(correct.dtype), int(totals[2].item())


def evaluate(
    net: nn.Module,
    loader: Iterable[Batch],
    criterion: Criterion,
    *,
    device: torch.device | str | None = None,
    distributed: bool = False,
) -> Evaluation:
    """Mean per-sample loss and accuracy (%) of ``net`` on ``loader``.

    Runs in eval mode under ``torch.no_grad()`` and restores each submodule's previous
    mode. ``device``: as in :func:`resolve_device`. Syncs with the device once, at the end.
    ``distributed``: ``loader`` is this process's shard; the sums are all-reduced once at
    the end, so every process returns the metrics of all shards together (pass the bare
    model, not its DDP wrapper: shards may differ in their number of batches).
    Raises ValueError for a loader (all shards together) without samples.
    """
    check_mean_reduction(criterion)
    device = resolve_device(net, device)
    loss_sum = torch.zeros((), dtype=accumulator_dtype(device), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    samples = 0
    with torch.no_grad(), eval_mode(net):
        for batch in loader:
            X, y = to_device(batch, device)
            logits = net(X)
            loss_sum += batch_loss(criterion, logits, y).to(loss_sum.dtype) * y.shape[0]
            correct += (logits.argmax(dim=1) == y).sum()
            samples += y.shape[0]
    if distributed:
        loss_sum, correct, samples = sum_over_processes(loss_sum, correct, samples)
    if samples == 0:
        raise ValueError("cannot evaluate: the loader yielded no samples")
    return Evaluation(loss=loss_sum.item() / samples, acc=100.0 * correct.item() / samples)
