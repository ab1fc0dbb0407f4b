"""Same seed on the CPU: bitwise-identical History metrics and weights."""

import torch
from torch import nn

from bnlab.models import build_model
from bnlab.train import train_classify


def _run(seed, make_loader, norm="bnlab"):
    torch.manual_seed(seed)
    net = build_model("lenet", norm)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    history = train_classify(
        net, make_loader([16, 16, 16, 7], seed=seed), make_loader([16, 5], seed=seed + 100),
        optimizer, nn.CrossEntropyLoss(), 2, progress=False,
    )  # fmt: skip
    return history, net.state_dict(), optimizer.state_dict()


def test_same_seed_is_bitwise_identical(make_loader):
    h1, w1, o1 = _run(0, make_loader)
    h2, w2, o2 = _run(0, make_loader)
    assert [r.metrics() for r in h1] == [r.metrics() for r in h2]
    assert list(w1) == list(w2)
    for key in w1:
        assert torch.equal(w1[key], w2[key]), key
    for pid, state in o1["state"].items():
        for name, value in state.items():
            assert torch.equal(value, o2["state"][pid][name]), (pid, name)


def test_another_seed_differs(make_loader):
    h1, w1, _ = _run(0, make_loader)
    h2, w2, _ = _run(1, make_loader)
    assert not torch.equal(w1["0.weight"], w2["0.weight"])
    assert [r.metrics() for r in h1] != [r.metrics() for r in h2]
