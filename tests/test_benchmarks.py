"""The benchmarks' baselines are what they claim to be (no timing here: see benchmarks/)."""

import pytest
import torch

from bnlab.data import FashionMNIST


@pytest.fixture
def data_env(tiny_data, monkeypatch):
    monkeypatch.setenv("BNLAB_DATA", str(tiny_data))
    return tiny_data


def test_torchvision_style_dataset_gives_the_same_samples(data_env):
    pytest.importorskip("PIL")
    from benchmarks.notebook_data import TorchvisionStyleFashionMNIST, notebook_loaders

    ours = FashionMNIST(train=False, download=False)
    theirs = TorchvisionStyleFashionMNIST(train=False)
    assert len(theirs) == len(ours)
    for i in (0, len(ours) - 1):
        (x, y), (x2, y2) = theirs[i], ours[i]
        assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
        assert torch.equal(x, x2) and y == y2
    train, test = notebook_loaders(8)
    assert next(iter(test))[0].shape == (8, 1, 28, 28)
    assert len(train.dataset) == len(FashionMNIST(train=True, download=False))


@pytest.mark.parametrize("norm", ["bnlab", "torch", "none"])
def test_training_step_trains(norm):
    from benchmarks.training import training_step
    from bnlab.models import lenet

    torch.manual_seed(0)
    model = lenet(norm)
    before = [p.detach().clone() for p in model.parameters()]
    training_step(model, 8)()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_notebook_lenet_is_the_notebooks():
    from benchmarks.notebook_bn import notebook_lenet
    from bnlab.models import count_parameters

    net = notebook_lenet()
    assert net(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert count_parameters(net) == 44878
