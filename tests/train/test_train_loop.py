"""train_classify against an independent replay of the same training, and its options."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.models import lenet
from bnlab.train import EpochRecord, History, evaluate, train_classify

TRAIN_SIZES = [16] * 5 + [5]  # uneven last batch
TEST_SIZES = [32, 32, 7]


def _adamw(net):
    return torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)


def _replay(net, train_batches, test_batches, epochs, max_steps=None):
    """A plain loop: per epoch the train loss/acc (sample-weighted) and the test loss/acc
    from summed per-sample losses in eval mode. Returns (per-epoch metrics, net)."""
    optimizer = _adamw(net)
    rows = []
    for _ in range(epochs):
        net.train()
        loss_sum, correct, n = 0.0, 0, 0
        for X, y in train_batches[:max_steps]:
            optimizer.zero_grad()
            out = net(X)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
        train = (loss_sum / n, 100 * correct / n)
        net.eval()
        t_sum, t_correct, t_n = 0.0, 0, 0
        with torch.no_grad():
            for X, y in test_batches:
                out = net(X)
                t_sum += F.cross_entropy(out, y, reduction="sum").item()
                t_correct += int((out.argmax(1) == y).sum())
                t_n += len(y)
        rows.append((*train, t_sum / t_n, 100 * t_correct / t_n))
    return rows, net


def _run(net, train_loader, test_loader, epochs, **kwargs):
    return train_classify(
        net, train_loader, test_loader, _adamw(net), nn.CrossEntropyLoss(), epochs,
        progress=False, **kwargs,
    )  # fmt: skip


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("norm", ["bnlab", "torch", "none"])
def test_history_matches_replay(make_loader, norm):
    torch.manual_seed(0)
    net = lenet(norm)
    initial = copy.deepcopy(net)
    train, test = make_loader(TRAIN_SIZES, seed=1), make_loader(TEST_SIZES, seed=2)
    history = _run(net, train, test, 2)
    expected, replayed = _replay(initial, train.batches, test.batches, 2)
    assert isinstance(history, History) and history.epochs == [1, 2]
    for record, (tr_loss, tr_acc, te_loss, te_acc) in zip(history, expected, strict=True):
        assert record.train_loss == pytest.approx(tr_loss, rel=1e-12)
        assert record.train_acc == pytest.approx(tr_acc, rel=1e-12)
        assert record.test_loss == pytest.approx(te_loss, rel=1e-5)
        assert record.test_acc == pytest.approx(te_acc, rel=1e-12)
        assert record.seconds > 0 and record.samples_per_s > 0
        assert isinstance(record.peak_memory_bytes, int) and record.peak_memory_bytes > 0
    _assert_same_weights(net, replayed)
    assert net.training  # left in train mode, as the notebook's loop does


def test_train_loss_weights_the_uneven_last_batch(make_loader):
    """With sizes 16,16,16,16,16,5 the sample-weighted mean differs from the mean of batch
    means; the record must equal the former."""
    torch.manual_seed(0)
    net = lenet("torch")
    initial = copy.deepcopy(net)
    train, test = make_loader(TRAIN_SIZES, seed=3), make_loader([8], seed=4)
    record = _run(net, train, test, 1)[0]
    optimizer, batch_means, weighted = _adamw(initial), [], 0.0
    for X, y in train.batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(initial(X), y)
        loss.backward()
        optimizer.step()
        batch_means.append(loss.item())
        weighted += loss.item() * len(y)
    weighted /= sum(TRAIN_SIZES)
    unweighted = sum(batch_means) / len(batch_means)
    assert abs(weighted - unweighted) > 1e-4
    assert record.train_loss == pytest.approx(weighted, rel=1e-12)


def test_max_steps_caps_batches_per_epoch(make_loader, capsys):
    torch.manual_seed(0)
    net = lenet("bnlab")
    initial = copy.deepcopy(net)
    train, test = make_loader([8] * 10, seed=1), make_loader([8, 8], seed=2)
    net_opt = _adamw(net)
    history = train_classify(
        net, train, test, net_opt, nn.CrossEntropyLoss(), 2, max_steps=3, progress=True
    )
    assert train.yielded == 6  # islice stops without pulling a 4th batch
    expected, replayed = _replay(initial, train.batches, test.batches, 2, max_steps=3)
    assert [r.train_loss for r in history] == pytest.approx([e[0] for e in expected], rel=1e-12)
    assert [r.train_acc for r in history] == pytest.approx([e[1] for e in expected], rel=1e-12)
    _assert_same_weights(net, replayed)
    assert "3/3" in capsys.readouterr().err


def test_start_epoch_numbers_epochs_up_to_num_epochs(make_loader, capsys):
    net = lenet("none")
    train, test = make_loader([8, 8]), make_loader([8])
    history = _run(net, train, test, 4, start_epoch=3)
    assert history.epochs == [3, 4]
    out = capsys.readouterr().out
    assert out.count("Epoch: 3, ") == 2 and out.count("Epoch: 4, ") == 2
    assert "Epoch: 1," not in out and "Epoch: 5," not in out
    assert len(_run(net, train, test, 4, start_epoch=5)) == 0


def test_scheduler_steps_once_per_epoch_and_callback_sees_each_record(make_loader):
    net = lenet("torch")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    seen = []

    def on_epoch_end(record, model, opt):
        assert model is net and opt is optimizer
        seen.append((record, opt.param_groups[0]["lr"]))

    history = train_classify(
        net, make_loader([8, 8]), make_loader([8]), optimizer, nn.CrossEntropyLoss(), 3,
        scheduler=scheduler, on_epoch_end=on_epoch_end, progress=False,
    )  # fmt: skip
    assert [r for r, _ in seen] == list(history)
    assert [lr for _, lr in seen] == pytest.approx([0.05, 0.025, 0.0125])


def test_reduce_on_plateau_gets_the_test_loss(make_loader):
    net = lenet("torch")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    calls = []

    class Plateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics, *args, **kwargs):
            calls.append(metrics)
            super().step(metrics, *args, **kwargs)

    history = train_classify(
        net, make_loader([8, 8]), make_loader([8]), optimizer, nn.CrossEntropyLoss(), 2,
        scheduler=Plateau(optimizer), progress=False,
    )  # fmt: skip
    assert calls == history.column("test_loss")


def test_memory_meter_is_reset_each_epoch(make_loader):
    class Meter:
        resets = 0

        def reset_peak(self):
            self.resets += 1

        def peak(self):
            return 1000 + self.resets

    net = lenet("none")
    meter = Meter()
    history = _run(net, make_loader([8]), make_loader([8]), 3, memory=meter)
    assert meter.resets == 3
    assert history.column("peak_memory_bytes") == [1001, 1002, 1003]


@pytest.mark.parametrize("device", ["cpu", "auto", torch.device("cpu")])
def test_device_argument(make_loader, device):
    history = _run(lenet("none"), make_loader([8, 4]), make_loader([8]), 1, device=device)
    assert len(history) == 1
    assert all(math.isfinite(v) for v in history[0].metrics().values())


def test_unknown_device(make_loader):
    with pytest.raises(ValueError, match="unknown device"):
        _run(lenet("none"), make_loader([8]), make_loader([8]), 1, device="tpu")


def test_records_are_epoch_records(make_loader):
    history = _run(lenet("none"), make_loader([8]), make_loader([8]), 1)
    assert isinstance(history[0], EpochRecord)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_epochs": -1}, "num_epochs"),
        ({"num_epochs": 1.5}, "num_epochs"),
        ({"start_epoch": 0}, "start_epoch"),
        ({"max_steps": 0}, "max_steps"),
        ({"refresh_s": -1.0}, "refresh_s"),
        ({"refresh_s": None}, "refresh_s"),
        ({"max_steps": True}, "max_steps"),
    ],
)
def test_bad_arguments(make_loader, kwargs, match):
    net = lenet("none")
    args = {"num_epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        train_classify(
            net, make_loader([8]), make_loader([8]), _adamw(net), nn.CrossEntropyLoss(),
            args.pop("num_epochs"), progress=False, **args,
        )  # fmt: skip


def test_criterion_must_average(make_loader):
    net = lenet("none")
    with pytest.raises(ValueError, match="reduction"):
        _run_with(net, make_loader, nn.CrossEntropyLoss(reduction="sum"))


def _run_with(net, make_loader, criterion):
    return train_classify(
        net, make_loader([8]), make_loader([8]), _adamw(net), criterion, 1, progress=False
    )


def test_empty_train_loader(make_loader):
    net = lenet("none")
    with pytest.raises(ValueError, match="no samples"):
        train_classify(
            net, [], make_loader([8]), _adamw(net), nn.CrossEntropyLoss(), 1, progress=False
        )


class _Squeezing(nn.Module):
    """A criterion that accepts (B, 1) labels: the loop must still refuse them (its accuracy
    would compare a (B, C) argmax against (B, 1) labels by broadcasting)."""

    reduction = "mean"

    def forward(self, scores, y):
        return F.cross_entropy(scores, y.squeeze(1))


def test_labels_must_be_one_per_sample(make_loader):
    net = lenet("none")
    batches = [(X, y.unsqueeze(1)) for X, y in make_loader([8])]
    with pytest.raises(ValueError, match=r"\(B,\) integer labels, got .* shape \(8, 1\)"):
        train_classify(net, batches, batches, _adamw(net), _Squeezing(), 1, progress=False)


def test_class_weighted_and_per_sample_criteria_are_refused(make_loader):
    net = lenet("none")
    with pytest.raises(ValueError, match="class-weighted"):
        _run_with(net, make_loader, nn.CrossEntropyLoss(weight=torch.ones(10)))
    for criterion in (nn.CrossEntropyLoss(ignore_index=0), nn.NLLLoss(ignore_index=3)):
        with pytest.raises(ValueError, match="must count every sample: ignore_index="):
            _run_with(net, make_loader, criterion)
        with pytest.raises(ValueError, match="must count every sample"):
            evaluate(net, make_loader([8]), criterion)

    def per_sample(scores, y):
        return F.cross_entropy(scores, y, reduction="none")

    with pytest.raises(ValueError, match="one batch-mean loss, got shape"):
        _run_with(net, make_loader, per_sample)


def test_batches_must_be_pairs_of_tensors(make_loader):
    net = lenet("none")
    X, y = next(iter(make_loader([8])))
    for bad in ([(X, y, y)], [{"x": X, "y": y}]):
        with pytest.raises(ValueError, match=r"a batch must be an \(X, y\) pair of tensors"):
            train_classify(net, bad, make_loader([8]), _adamw(net), nn.CrossEntropyLoss(), 1,
                           progress=False)


def test_an_empty_test_loader_is_refused_before_training(make_loader):
    net = lenet("none")
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="test_loader holds no batches"):
        train_classify(net, make_loader([8]), [], _adamw(net), nn.CrossEntropyLoss(), 1,
                       progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
