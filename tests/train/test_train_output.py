"""What train_classify prints: the notebook's bar and lines, with and without bars."""

import re

import torch
from torch import nn
from tqdm import tqdm

from bnlab.models import lenet
from bnlab.train import train_classify

FLOAT = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)"
TRAIN_LINE = re.compile(rf"^Epoch: (\d+), loss: {FLOAT}, acc: {FLOAT}$")
TEST_LINE = re.compile(rf"^Epoch: (\d+), test loss: {FLOAT}, test acc: {FLOAT}$")


def _train(make_loader, epochs, **kwargs):
    torch.manual_seed(0)
    net = lenet("bnlab")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    return train_classify(
        net, make_loader([16, 16, 16, 5]), make_loader([16, 9]), optimizer,
        nn.CrossEntropyLoss(), epochs, **kwargs,
    )  # fmt: skip


def test_lines_carry_the_recorded_values(make_loader, capsys):
    history = _train(make_loader, 2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for i, record in enumerate(history):
        train = TRAIN_LINE.match(lines[2 * i])
        test = TEST_LINE.match(lines[2 * i + 1])
        assert train and test, lines
        assert int(train[1]) == int(test[1]) == record.epoch
        # printed as Python floats: parse back exactly
        assert (float(train[2]), float(train[3])) == (record.train_loss, record.train_acc)
        assert (float(test[2]), float(test[3])) == (record.test_loss, record.test_acc)
        assert 0 <= record.train_acc <= 100 and 0 <= record.test_acc <= 100


def test_bar_shows_epoch_rate_and_final_postfix(make_loader, capsys):
    history = _train(make_loader, 2)
    err = capsys.readouterr().err
    for record in history:
        finals = [
            line for line in re.split(r"[\r\n]", err) if line.startswith(f"Epoch {record.epoch}:")
        ]
        assert finals, err
        last = finals[-1]
        assert "100%" in last and "4/4" in last and "it/s" in last
        # tqdm's own number format (3 significant digits), accuracy then loss
        postfix = (
            f"accuracy={tqdm.format_num(record.train_acc)}, "
            f"loss={tqdm.format_num(record.train_loss)}]"
        )
        assert last.rstrip().endswith(postfix), last


def test_progress_false_prints_lines_without_bars(make_loader, capsys):
    _train(make_loader, 1, progress=False)
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert len(lines) == 2 and TRAIN_LINE.match(lines[0]) and TEST_LINE.match(lines[1])


def test_refresh_every_batch_changes_nothing_but_sync_points(make_loader, capsys):
    a = _train(make_loader, 1, progress=False, refresh_s=0.0)
    b = _train(make_loader, 1, progress=False, refresh_s=1e9)
    assert a[0].metrics() == b[0].metrics()
