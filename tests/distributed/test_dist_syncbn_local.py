"""SyncBatchNorm without a process group, its state_dict, and convert_sync_batchnorm."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

import bnlab
from bnlab.norm import SyncBatchNorm, convert_sync_batchnorm


def test_without_a_process_group_it_is_plain_batch_norm():
    assert not dist.is_initialized()
    torch.manual_seed(0)
    ours, plain = SyncBatchNorm(4, momentum=None), bnlab.BatchNorm2d(4, momentum=None)
    for _ in range(3):
        x = torch.randn(5, 4, 3, 3, requires_grad=True)
        y, y_plain = ours(x), plain(x)
        torch.testing.assert_close(y, y_plain, rtol=0, atol=0)
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        (want,) = torch.autograd.grad(y_plain.square().sum(), x)
        torch.testing.assert_close(gx, want, rtol=0, atol=0)
    assert torch.equal(ours.running_var, plain.running_var)
    assert int(ours.num_batches_tracked) == int(plain.num_batches_tracked)


@pytest.mark.parametrize("shape", [(3, 2), (3, 2, 4), (3, 2, 2, 2), (3, 2, 1, 2, 2),
                                   (3, 2, 1, 1, 2, 2)])
def test_any_input_rank_from_two(shape):
    x = torch.randn(shape)
    torch.testing.assert_close(SyncBatchNorm(2)(x), bnlab.BatchNorm(2, 3)(x.flatten(2)).view(shape)
                               if x.dim() > 2 else bnlab.BatchNorm1d(2)(x))


def test_rank_one_and_channel_mismatch_are_errors():
    with pytest.raises(ValueError, match="expected at least 2D input"):
        SyncBatchNorm(3)(torch.randn(3))
    with pytest.raises(ValueError, match="expected 3 in dim 1"):
        SyncBatchNorm(3)(torch.randn(4, 2))


def test_state_dict_is_torchs_and_loads_both_ways():
    theirs = nn.SyncBatchNorm(3, momentum=0.3)
    with torch.no_grad():
        for t in theirs.state_dict().values():
            t.add_(torch.arange(t.numel()).view_as(t).to(t.dtype) + 1)
    ours = SyncBatchNorm(3)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    fresh = nn.SyncBatchNorm(3)
    fresh.load_state_dict(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    assert "process_group" not in ours.state_dict()


def mixed_model() -> nn.Module:
    torch.manual_seed(0)
    tracked_off = nn.BatchNorm1d(5)
    tracked_off.track_running_stats = False
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=None), bnlab.BatchNorm2d(3, eps=1e-3),
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5), bnlab.BatchNorm(5, 2), tracked_off,
                      nn.BatchNorm1d(5, affine=False), nn.SyncBatchNorm(5)),
        bnlab.BatchNorm1d(5, bias=False), nn.Linear(5, 2),
    )
    for _ in range(2):
        model(torch.randn(4, 1, 6, 6))
    model[3][2].weight.requires_grad_(False)
    model[3][2].eval()
    return model


def test_convert_replaces_every_bn_layer_keeping_tensors_settings_and_mode():
    model = mixed_model()
    before = {name: (type(m), m.training) for name, m in model.named_modules()}
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 6, 6)

    def outputs(net):
        """Train- and eval-mode outputs, each from the saved statistics; modes restored."""
        modes = [(m, m.training) for m in net.modules()]
        result = []
        for mode in (True, False):
            net.load_state_dict(state)
            result.append(net.train(mode)(x))
        for m, training in modes:
            m.training = training
        net.load_state_dict(state)
        return result

    want = outputs(model)
    group = object()
    converted = convert_sync_batchnorm(model, process_group=group)
    assert converted is model
    for name, m in converted.named_modules():
        if bnlab.is_batch_norm(before[name][0].__new__(before[name][0])):
            assert type(m) is SyncBatchNorm and m.process_group is group, name
        else:
            assert type(m) is before[name][0], name
        assert m.training == before[name][1], name
    assert dict(converted.named_parameters()).keys() == params.keys()
    for key, p in converted.named_parameters():
        assert p is params[key]
    for key, b in converted.named_buffers():
        assert b is buffers[key]
    assert converted.state_dict().keys() == state.keys()
    assert not converted[3][2].weight.requires_grad
    assert converted[1].momentum is None and converted[2].eps == 1e-3
    assert converted[3][4].weight is None and converted[4].bias is None
    assert not converted[3][3].track_running_stats and converted[3][3].running_mean is not None
    for got, expected in zip(outputs(converted), want):
        torch.testing.assert_close(got, expected)


def test_convert_a_bare_layer_returns_its_replacement():
    layer = nn.BatchNorm3d(2).eval()
    new = convert_sync_batchnorm(layer)
    assert type(new) is SyncBatchNorm and not new.training and new.weight is layer.weight
    assert type(convert_sync_batchnorm(nn.Linear(2, 2))) is nn.Linear


def test_exported_from_the_package():
    assert bnlab.norm.SyncBatchNorm is SyncBatchNorm
    assert bnlab.norm.convert_sync_batchnorm is convert_sync_batchnorm
