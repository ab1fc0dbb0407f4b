"""Two-process training (DDP + SyncBatchNorm + sharded loaders) equals one process on the
global batch; sharding covers every sample once; evaluation counts each test sample once."""

from __future__ import annotations

import pytest
import torch
from dist_harness import run_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bnlab.data.loader import TensorLoader
from bnlab.data.loader import epoch_order as order_of
from bnlab.models import build_model
from bnlab.norm import SyncBatchNorm, convert_sync_batchnorm
from bnlab.train import evaluate, train_classify

WORLD = 2
BATCH = 8  # per process; the global batch is BATCH * WORLD
EPOCHS = 2


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable uint8 images (a bright bar per class) and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        images[i, 2 + 2 * label:5 + 2 * label, 4:24] = 220
    return images, labels


def loaders(rank: int, world: int, batch: int) -> tuple[TensorLoader, TensorLoader]:
    train = TensorLoader(*synthetic(80, 0), batch, shuffle=True, seed=3, drop_last=True,
                         rank=rank, world_size=world)
    test = TensorLoader(*synthetic(37, 1), 8, rank=rank, world_size=world)  # 37: uneven shards
    return train, test


def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet", "bnlab")


def fit(net: nn.Module, params, rank: int, world: int, distributed: bool):
    train, test = loaders(rank, world, BATCH * WORLD // world)
    # SGD, not Adam: the biases in front of BN have a zero gradient up to rounding noise,
    # which Adam's normalization would blow up to full-size steps.
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)
    history = train_classify(net, train, test, optimizer, nn.CrossEntropyLoss(), EPOCHS,
                             device="cpu", progress=False, distributed=distributed)
    return [record.__dict__ for record in history]


def training_worker(rank: int, world: int) -> dict:
    net = convert_sync_batchnorm(model())
    assert sum(isinstance(m, SyncBatchNorm) for m in net.modules()) == 4
    ddp = DistributedDataParallel(net)
    ddp.broadcast_buffers = False
    history = fit(ddp, ddp.parameters(), rank, world, distributed=True)
    # Evaluation of the trained model on this rank's test shard, summed over the ranks.
    _, test = loaders(rank, world, BATCH)
    loss, acc = evaluate(net, test, nn.CrossEntropyLoss(), distributed=True)
    return {"state": net.state_dict(), "history": history, "eval": [loss, acc],
            "test_samples": test.num_samples}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_ranks(training_worker, WORLD, tmp_path_factory.mktemp("train"), timeout_s=90)


@pytest.fixture(scope="module")
def single():
    net = model()
    history = fit(net, net.parameters(), 0, 1, distributed=False)
    _, test = loaders(0, 1, BATCH)
    return {"state": net.state_dict(), "history": history,
            "eval": list(evaluate(net, test, nn.CrossEntropyLoss()))}


def test_weights_and_statistics_equal_single_process_on_the_global_batch(ranks, single):
    for rank in range(WORLD):
        state = ranks[rank]["state"]
        assert state.keys() == single["state"].keys()
        for key, want in single["state"].items():
            torch.testing.assert_close(state[key], want, rtol=1e-5, atol=1e-5, msg=key)


def test_history_is_global_and_equal_on_every_rank(ranks, single):
    for rank in range(WORLD):
        for got, want in zip(ranks[rank]["history"], single["history"], strict=True):
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-5), key


def test_evaluation_counts_each_test_sample_once(ranks, single):
    assert sum(r["test_samples"] for r in ranks) == 37
    for rank in range(WORLD):
        assert ranks[rank]["eval"] == pytest.approx(single["eval"], rel=1e-6)


@pytest.mark.parametrize("n, batch, world", [(80, 8, 2), (83, 8, 2), (50, 4, 3), (5, 4, 3)])
def test_sharding_covers_the_training_data_exactly_once_per_epoch(n, batch, world):
    images, labels = synthetic(n, 0)
    for epoch in range(2):
        shards = [TensorLoader(images, labels, batch, shuffle=True, seed=9, rank=r,
                               world_size=world).batch_indices(epoch) for r in range(world)]
        seen = torch.cat([torch.cat(s) if s else torch.zeros(0, dtype=torch.long)
                          for s in shards])
        assert sorted(seen.tolist()) == list(range(n))
        # The multi-process training loaders (drop_last): same steps on every rank, each a
        # full per-process batch, together the epoch's order without its partial tail.
        dropped = [TensorLoader(images, labels, batch, shuffle=True, seed=9, drop_last=True,
                                rank=r, world_size=world).batch_indices(epoch)
                   for r in range(world)]
        assert len({len(s) for s in dropped}) == 1
        assert all(len(b) == batch for s in dropped for b in s)
        steps = [torch.cat([s[k] for s in dropped]) for k in range(len(dropped[0]))]
        full = n // (batch * world) * batch * world
        order = order_of(n, 9, epoch, True)
        assert torch.equal(torch.cat(steps) if steps else order[:0], order[:full])
