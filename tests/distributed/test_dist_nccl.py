"""SyncBatchNorm's collectives on nccl with CUDA tensors (skipped without CUDA).

One GPU: a world of one, calling the synchronized path directly (the module itself would
take the local path) against ``bnlab.functional.batch_norm`` in float64 on the CPU.
Two GPUs or more: uneven and empty per-rank batches against BN on the concatenated batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from dist_harness import run_ranks

from bnlab.functional import batch_norm
from bnlab.norm import SyncBatchNorm, sync_batch_norm

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and dist.is_nccl_available()), reason="needs CUDA and nccl"
)
TOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 2e-2}
SIZES = (5, 0)  # per-rank batch sizes on two GPUs


def data(n: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64) * 2 + 1).to(dtype)
    dy = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64).to(dtype)
    w = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    return x, dy, w, torch.randn(3, generator=g, dtype=torch.float64)


def one_gpu_worker(rank: int, world: int) -> dict:
    device = torch.device("cuda", rank)
    results = {}
    for dtype in TOL:
        x, dy, w, b = data(6, dtype)
        x = x.to(device).requires_grad_()
        weight = w.to(device, torch.float32).requires_grad_()
        bias = b.to(device, torch.float32).requires_grad_()
        mean, var = torch.zeros(3, device=device), torch.ones(3, device=device)
        y = sync_batch_norm(x, mean, var, weight, bias, 0.1, 1e-5)
        y.backward(dy.to(device))
        results[str(dtype)] = [t.detach().cpu() for t in (y, x.grad, weight.grad, bias.grad,
                                                          mean, var)]
    return results


def test_nccl_collectives_on_one_gpu(tmp_path):
    (got,) = run_ranks(one_gpu_worker, 1, tmp_path, backend="nccl", timeout_s=120)
    for dtype, tol in TOL.items():
        x, dy, w, b = data(6, dtype)
        x = x.double().requires_grad_()
        weight, bias = w.clone().requires_grad_(), b.double().requires_grad_()
        mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        y = batch_norm(x, mean, var, weight, bias, True, 0.1, 1e-5)
        y.backward(dy.double())
        for g, want in zip(got[str(dtype)], (y, x.grad, weight.grad, bias.grad, mean, var)):
            torch.testing.assert_close(g.double(), want.detach(), rtol=tol, atol=tol)


def two_gpu_worker(rank: int, world: int) -> list[torch.Tensor]:
    device = torch.device("cuda", rank)
    x, dy, w, b = data(sum(SIZES), torch.float64)
    rows = slice(sum(SIZES[:rank]), sum(SIZES[:rank + 1]))
    layer = SyncBatchNorm(3, device=device, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b.double())
    xr = x[rows].to(device).requires_grad_()
    y = layer(xr)
    y.backward(dy[rows].to(device))
    return [t.detach().cpu() for t in (y, xr.grad, layer.weight.grad, layer.bias.grad,
                                       layer.running_mean, layer.running_var)]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_nccl_two_gpus_uneven_and_empty(tmp_path):
    ranks = run_ranks(two_gpu_worker, 2, tmp_path, backend="nccl", timeout_s=120)
    x, dy, w, b = data(sum(SIZES), torch.float64)
    x = x.requires_grad_()
    weight, bias = w.clone().requires_grad_(), b.double().requires_grad_()
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y = batch_norm(x, mean, var, weight, bias, True, 0.1, 1e-5)
    y.backward(dy)
    torch.testing.assert_close(torch.cat([r[0] for r in ranks]), y.detach())
    torch.testing.assert_close(torch.cat([r[1] for r in ranks]), x.grad)
    torch.testing.assert_close(ranks[0][2] + ranks[1][2], weight.grad)
    torch.testing.assert_close(ranks[0][3] + ranks[1][3], bias.grad)
    for r in ranks:
        torch.testing.assert_close(r[4], mean)
        torch.testing.assert_close(r[5], var)
