"""On CUDA: the loop's host syncs do not grow with the number of batches (skipped on CPU)."""

import warnings

import pytest
import torch
from torch import nn

from bnlab.models import lenet
from bnlab.train import train_classify

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _count_syncs(batches, test_batches) -> int:
    torch.manual_seed(0)
    net = lenet("bnlab").cuda()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_classify(
                net, batches, test_batches, optimizer, nn.CrossEntropyLoss(), 1,
                progress=False, refresh_s=1e9,
            )  # fmt: skip
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_no_host_sync_per_batch(make_loader):
    def on_gpu(sizes, seed):
        return [(X.cuda(), y.cuda()) for X, y in make_loader(sizes, seed=seed).batches]

    test_batches = on_gpu([32, 32], 9)
    _count_syncs(on_gpu([32] * 2, 0), test_batches)  # warm-up: lazy CUDA initialisation
    few = _count_syncs(on_gpu([32] * 4, 1), test_batches)
    many = _count_syncs(on_gpu([32] * 24, 2), test_batches)
    assert few == many, (few, many)


def test_cuda_history_matches_cpu(make_loader):
    """Same data and initial weights: CUDA and CPU metrics agree to float tolerance."""
    records = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        net = lenet("bnlab")
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
        history = train_classify(
            net, make_loader([32] * 4, seed=3), make_loader([32, 7], seed=4), optimizer,
            nn.CrossEntropyLoss(), 1, device=device, progress=False,
        )  # fmt: skip
        assert next(net.parameters()).device.type == device
        records.append(history[0])
    cpu, cuda = records
    assert cuda.train_loss == pytest.approx(cpu.train_loss, rel=1e-4)
    assert cuda.test_loss == pytest.approx(cpu.test_loss, rel=1e-3)
    assert cuda.peak_memory_bytes > 0
