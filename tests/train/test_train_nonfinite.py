"""A non-finite training loss stops training with an error naming epoch and batch."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.models import lenet, lenet_relu
from bnlab.train import NonFiniteLossError, NonFiniteTestLossError, train_classify

SIZES = [8] * 6


def _train(net, train, test, epochs=3, optimizer=None, **kwargs):
    optimizer = optimizer or torch.optim.AdamW(net.parameters(), lr=1e-3)
    return train_classify(
        net, train, test, optimizer, nn.CrossEntropyLoss(), epochs, progress=False, **kwargs
    )


@pytest.mark.parametrize("norm", ["bnlab", "torch"])
def test_injected_inf_names_epoch_and_batch(make_loader, capsys, norm):
    train = make_loader(SIZES, inject=(2, 2))  # epoch 2, third batch
    records = []
    with pytest.raises(NonFiniteLossError) as info:
        _train(lenet(norm), train, make_loader([8]), on_epoch_end=lambda r, n, o: records.append(r))
    err = info.value
    assert isinstance(err, RuntimeError)
    assert (err.epoch, err.batch) == (2, 3)
    assert "epoch 2, batch 3" in str(err)
    # epoch 1 completed and was reported; epoch 2 was neither recorded nor checkpointed
    assert [r.epoch for r in records] == [1] == err.history.epochs
    out = capsys.readouterr().out
    assert "Epoch: 1, test loss" in out and "Epoch: 2" not in out


def test_sync_every_batch_stops_right_after_the_bad_batch(make_loader):
    train = make_loader(SIZES, inject=(1, 1))
    with pytest.raises(NonFiniteLossError) as info:
        _train(lenet("bnlab"), train, make_loader([8]), refresh_s=0.0)
    assert (info.value.epoch, info.value.batch, info.value.steps_after) == (1, 2, 1)
    assert train.yielded == 2  # no batch after the bad one was drawn


def test_detection_at_epoch_end_at_the_latest(make_loader):
    train = make_loader(SIZES, inject=(1, 1))
    with pytest.raises(NonFiniteLossError) as info:
        _train(lenet("bnlab"), train, make_loader([8]), refresh_s=1e9)
    assert (info.value.batch, info.value.steps_after) == (2, len(SIZES) - 1)
    assert train.yielded == len(SIZES) and train.epochs == 1


def test_diverging_learning_rate_matches_a_plain_replay(make_loader):
    """SGD with a huge learning rate diverges; the reported batch is the first one whose
    loss a plain loop sees as non-finite."""
    torch.manual_seed(0)
    net = lenet_relu("none")
    initial = copy.deepcopy(net)
    train = make_loader([8] * 20, seed=5)

    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=100.0, momentum=0.9)

    replay_opt = sgd(initial)
    first_bad = None
    for i, (X, y) in enumerate(train.batches):
        replay_opt.zero_grad()
        loss = F.cross_entropy(initial(X), y)
        if not math.isfinite(loss.item()):
            first_bad = i + 1
            break
        loss.backward()
        replay_opt.step()
    assert first_bad is not None and first_bad > 1, "pick a learning rate that diverges later"
    with pytest.raises(NonFiniteLossError) as info:
        _train(net, train, make_loader([8]), optimizer=sgd(net))
    assert (info.value.epoch, info.value.batch) == (1, first_bad)


@pytest.mark.parametrize("err", [NonFiniteLossError(2, 5, 7),
                                 NonFiniteTestLossError(3, float("inf"))])
def test_the_errors_cross_processes_whole(err):
    import pickle

    back = pickle.loads(pickle.dumps(err))  # as bnlab compare's run processes send them
    assert type(back) is type(err) and str(back) == str(err)
    assert (back.epoch, back.batch, back.steps_after) == (err.epoch, err.batch, err.steps_after)
