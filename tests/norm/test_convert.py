"""convert(): swap implementations, keep everything else."""

import pytest
import torch
from torch import nn

import bnlab


def torch_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=None), nn.ReLU(),
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.BatchNorm1d(5, affine=False)),
        nn.Linear(5, 2),
    )
    for _ in range(3):
        model(torch.randn(4, 1, 6, 6))
    model[0].weight.requires_grad_(False)
    return model


def test_to_bnlab_and_back_preserves_outputs_state_and_mode():
    model = torch_model()
    ours = bnlab.convert(model, to="bnlab")
    assert type(ours[1]) is bnlab.BatchNorm2d and type(ours[3][2]) is bnlab.BatchNorm1d
    assert ours[1].momentum is None and not ours[3][2].affine
    assert not ours[0].weight.requires_grad
    assert type(model[1]) is nn.BatchNorm2d  # the original is untouched
    for key, value in model.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    x = torch.randn(4, 1, 6, 6)
    for mode in (True, False):
        model.train(mode)
        back = bnlab.convert(bnlab.convert(model, to="bnlab"), to="torch")
        assert type(back[1]) is nn.BatchNorm2d and back.training == mode
        torch.testing.assert_close(bnlab.convert(model)(x), model(x))
        torch.testing.assert_close(back(x), model(x))


def test_parameters_are_copies_not_shared():
    model = torch_model()
    ours = bnlab.convert(model)
    assert ours[1].weight is not model[1].weight
    with torch.no_grad():
        ours[1].weight.add_(1)
    assert not torch.equal(ours[1].weight, model[1].weight)


@pytest.mark.parametrize("num_dims, cls", [(2, nn.BatchNorm1d), (4, nn.BatchNorm2d),
                                           (5, nn.BatchNorm3d)])
def test_notebook_form_converts_to_torch(num_dims, cls):
    layer = bnlab.BatchNorm(3, num_dims)
    assert type(bnlab.convert(layer, to="torch")) is cls


def test_tracking_switched_off_after_construction_is_carried_over():
    layer = nn.BatchNorm1d(3)
    layer.track_running_stats = False
    ours = bnlab.convert(layer)
    assert not ours.track_running_stats and ours.running_mean is not None


def test_unknown_target():
    with pytest.raises(ValueError, match="must be 'bnlab' or 'torch'"):
        bnlab.convert(nn.Linear(2, 2), to="jax")


def test_sync_batch_norm_becomes_torchs_keeping_its_group():
    group = object()  # stands for a process group: only carried over
    model = nn.Sequential(nn.Conv2d(1, 3, 3), bnlab.SyncBatchNorm(3, process_group=group))
    model[1].running_mean.fill_(0.5)
    converted = bnlab.convert(model, to="torch")
    layer = converted[1]
    assert type(layer) is nn.SyncBatchNorm and layer.process_group is group
    assert torch.equal(layer.running_mean, torch.full((3,), 0.5))
