"""The users' notebook, cells In [2] and In [6]-[9] verbatim, on small generated data.

Changes to the cells: the three ``utils`` imports become the one bnlab import, and
``num_epochs=10`` becomes ``num_epochs=1``. ``load_data_fashion_mnist(64)`` (In [3]) runs as
written, finding small generated IDX files through ``$BNLAB_DATA``. Cells In [4]/[5] define
the notebook's own hand-written BatchNorm; with bnlab they are not run (bnlab's ``BatchNorm``
takes their place).
"""

import re

import pytest
import torch
import torch.nn.functional as F
from tiny_fashion import write_tiny_fashion

NOTEBOOK_IMPORT = (
    "from bnlab import train_classify, GPUMemoryManager, load_data_fashion_mnist, BatchNorm"
)
CELL_2 = """\
import torch
from torch import nn
{imports}

device = 'cuda' if torch.cuda.is_available() else 'cpu'
"""

CELL_3 = "train_loader, test_loader = load_data_fashion_mnist(64)"

CELL_6 = """\
net = nn.Sequential(
    nn.Conv2d(1, 6, kernel_size=5), BatchNorm(6, num_dims=4), nn.Sigmoid(),
    nn.AvgPool2d(kernel_size=2, stride=2),
    nn.Conv2d(6, 16, kernel_size=5), BatchNorm(16, num_dims=4), nn.Sigmoid(),
    nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
    nn.Linear(16*4*4, 120), BatchNorm(120, num_dims=2), nn.Sigmoid(),
    nn.Linear(120, 84), BatchNorm(84, num_dims=2), nn.Sigmoid(),
    nn.Linear(84, 10)
)
"""

CELL_7 = """\
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.AdamW(net.parameters(), lr=0.001, weight_decay=0.01)
train_classify(net.to(device), train_loader, test_loader, optimizer, criterion, num_epochs=10)
"""

CELL_8 = """\
concise_net = nn.Sequential(
    nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
    nn.AvgPool2d(kernel_size=2, stride=2),
    nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
    nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
    nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
    nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
    nn.Linear(84, 10)
)
"""

CELL_9 = """\
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.AdamW(concise_net.parameters(), lr=0.001, weight_decay=0.01)
train_classify(concise_net.to(device), train_loader, test_loader, optimizer, criterion, num_epochs=10)
"""  # noqa: E501

FLOAT = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)"
TRAIN_LINE = re.compile(rf"^Epoch: 1, loss: {FLOAT}, acc: {FLOAT}$")
TEST_LINE = re.compile(rf"^Epoch: 1, test loss: {FLOAT}, test acc: {FLOAT}$")
# tqdm shows s/it instead of it/s when an iteration takes over a second (a first run that
# compiles the kernels).
BAR = re.compile(
    r"^Epoch 1: 100%\|.*\| 9/9 \[.*(?:it/s|s/it), accuracy=[\d.]+, loss=[\d.e-]+\]$")


def _run_cell(source: str, namespace: dict):
    """Run a cell like IPython: statements, then the value of the last line."""
    *body, last = source.replace("num_epochs=10", "num_epochs=1").rstrip().splitlines()
    exec("\n".join(body), namespace)
    return eval(last, namespace)


def _independent_test_metrics(net, loader) -> tuple[float, float]:
    net.eval()
    device = next(net.parameters()).device  # the cells put the net on CUDA where there is one
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for X, y in loader:
            X, y = X.to(device), y.to(device)
            out = net(X)
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    net.train()
    return loss_sum / n, 100 * correct / n


def test_notebook_cells_run_and_print_the_expected_lines(capsys, tmp_path, monkeypatch):
    # 520 training images: 8 batches of 64 and one of 8, like the real uneven last batch.
    monkeypatch.setenv("BNLAB_DATA", str(write_tiny_fashion(tmp_path / "data", 520, 200)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    namespace: dict = {}
    exec(CELL_2.format(imports=NOTEBOOK_IMPORT), namespace)
    torch.manual_seed(0)
    exec(CELL_3, namespace)
    assert (len(namespace["train_loader"]), len(namespace["test_loader"])) == (9, 4)
    capsys.readouterr()

    results = []
    for build, train, net_name in ((CELL_6, CELL_7, "net"), (CELL_8, CELL_9, "concise_net")):
        exec(build, namespace)
        history = _run_cell(train, namespace)
        captured = capsys.readouterr()
        lines = captured.out.splitlines()
        assert len(lines) == 2, captured.out
        train_line, test_line = TRAIN_LINE.match(lines[0]), TEST_LINE.match(lines[1])
        assert train_line and test_line, lines
        bars = [s.strip() for s in re.split(r"[\r\n]", captured.err) if s.startswith("Epoch 1:")]
        assert BAR.match(bars[-1]), bars[-1]

        record = history[0]
        assert (float(train_line[1]), float(train_line[2])) == (record.train_loss, record.train_acc)
        test_loss, test_acc = float(test_line[1]), float(test_line[2])
        expected_loss, expected_acc = _independent_test_metrics(
            namespace[net_name], namespace["test_loader"]
        )
        assert test_loss == pytest.approx(expected_loss, rel=1e-5)  # not divided by 64 again
        assert test_acc == pytest.approx(expected_acc, rel=1e-12)
        # the cell's value, which the notebook displays: one short line
        assert repr(history).startswith("History(1 epoch,")
        results.append(record)
    assert len(results) == 2


def test_memory_manager_from_the_notebook_import():
    namespace: dict = {}
    exec(NOTEBOOK_IMPORT, namespace)
    summary = namespace["GPUMemoryManager"]("cpu").summary()
    assert isinstance(summary, str) and "cpu" in summary
