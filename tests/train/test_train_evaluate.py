"""evaluate(): true per-sample mean loss, eval mode, no grad, modes restored."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.models import lenet
from bnlab.train import Evaluation, evaluate


def _trained_a_little(make_loader):
    torch.manual_seed(0)
    net = lenet("bnlab")
    for X, _ in make_loader([32, 32]).batches:
        net(X)  # move the running statistics so that eval and train mode differ
    return net


def test_uneven_batches_give_the_per_sample_mean(make_loader):
    net = _trained_a_little(make_loader)
    loader = make_loader([50, 50, 3], seed=7)
    result = evaluate(net, loader, nn.CrossEntropyLoss())
    X = torch.cat([x for x, _ in loader.batches])
    y = torch.cat([t for _, t in loader.batches])
    net.eval()
    with torch.no_grad():
        logits = net(X)
    expected_loss = F.cross_entropy(logits, y, reduction="sum").item() / len(y)
    expected_acc = 100 * (logits.argmax(1) == y).sum().item() / len(y)
    assert isinstance(result, Evaluation)
    loss, acc = result
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert acc == pytest.approx(expected_acc, rel=1e-12)
    per_batch = [F.cross_entropy(net(x), t).item() for x, t in loader.batches]
    unweighted = sum(per_batch) / len(per_batch)
    assert abs(unweighted - expected_loss) > 1e-3  # the notebook's kind of mean is not it


def test_eval_mode_no_grad_and_modes_restored(make_loader):
    net = _trained_a_little(make_loader)
    net.train()
    net[13].eval()  # a submodule in its own mode must come back as it was
    before = {m: m.training for m in net.modules()}
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []
    net[1].register_forward_hook(
        lambda m, i, o: seen.append((m.training, torch.is_grad_enabled(), o.requires_grad))
    )
    evaluate(net, make_loader([8, 8]), nn.CrossEntropyLoss())
    assert seen == [(False, False, False)] * 2
    assert {m: m.training for m in net.modules()} == before
    for key, value in net.state_dict().items():
        assert torch.equal(value, stats[key]), key  # running statistics untouched


def test_modes_restored_after_an_error(make_loader):
    net = _trained_a_little(make_loader)
    net.train()
    bad = [(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 99]))]
    with pytest.raises(IndexError):
        evaluate(net, bad, nn.CrossEntropyLoss())
    assert all(m.training for m in net.modules())


def test_empty_loader():
    with pytest.raises(ValueError, match="no samples"):
        evaluate(lenet("none"), [], nn.CrossEntropyLoss())


def test_summing_criterion_is_refused(make_loader):
    with pytest.raises(ValueError, match="reduction"):
        evaluate(lenet("none"), make_loader([4]), nn.CrossEntropyLoss(reduction="sum"))
