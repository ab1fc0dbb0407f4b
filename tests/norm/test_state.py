"""state_dict interchange with torch, device/dtype moves, copies and pickling."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import bnlab

PAIRS = [(bnlab.BatchNorm1d, nn.BatchNorm1d, (6, 4)), (bnlab.BatchNorm2d, nn.BatchNorm2d,
         (6, 4, 3, 3)), (bnlab.BatchNorm3d, nn.BatchNorm3d, (6, 4, 2, 3, 3))]


def trained(cls, shape, **kwargs):
    layer = cls(4, **kwargs)
    if layer.affine:
        with torch.no_grad():
            layer.weight.uniform_(0.5, 2.0)
            if layer.bias is not None:
                layer.bias.uniform_(-1.0, 1.0)
    for _ in range(3):
        layer(torch.randn(shape) * 2 + 1)
    return layer


@pytest.mark.parametrize("ours_cls, theirs_cls, shape", PAIRS)
@pytest.mark.parametrize("kwargs", [{}, {"affine": False}, {"track_running_stats": False},
                                    {"bias": False}])
def test_state_dict_loads_both_ways(ours_cls, theirs_cls, shape, kwargs):
    x = torch.randn(shape)
    for src_cls, dst_cls in [(ours_cls, theirs_cls), (theirs_cls, ours_cls)]:
        src = trained(src_cls, shape, **kwargs).eval()
        dst = dst_cls(4, **kwargs).eval()
        dst.load_state_dict(src.state_dict())  # strict: identical keys
        assert list(dst.state_dict()) == list(src.state_dict())
        torch.testing.assert_close(dst(x), src(x))


def test_old_state_dict_without_num_batches_tracked_loads():
    layer = bnlab.BatchNorm1d(3)
    state = layer.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    bnlab.BatchNorm1d(3).load_state_dict(state)


def test_to_moves_parameters_and_buffers():
    layer = trained(bnlab.BatchNorm2d, (6, 4, 3, 3)).to(torch.float64)
    assert layer.weight.dtype == layer.running_mean.dtype == layer.running_var.dtype
    assert layer.running_var.dtype == torch.float64
    assert layer.num_batches_tracked.dtype == torch.long  # integer buffers keep their dtype
    meta = copy.deepcopy(layer).to("meta")
    assert all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    assert layer(x).dtype == torch.float64


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_deepcopy_and_pickle_keep_state_and_behaviour(clone):
    layer = trained(bnlab.BatchNorm2d, (6, 4, 3, 3), momentum=None)
    twin = clone(layer)
    assert type(twin) is bnlab.BatchNorm2d and twin.momentum is None
    for key, value in layer.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[key], value, rtol=0, atol=0)
    x = torch.randn(5, 4, 3, 3)
    torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=0)
    torch.testing.assert_close(twin.running_mean, layer.running_mean, rtol=0, atol=0)


def test_torch_save_round_trip_of_state_dict():
    layer = trained(bnlab.BatchNorm1d, (6, 4))
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = nn.BatchNorm1d(4)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh.running_var, layer.running_var)


def test_training_bumps_the_buffers_versions_as_in_place_updates(kernel):
    # Every kernel path writes the running statistics and the counter in place; autograd
    # must know (torch's own layer bumps num_batches_tracked's version with its add_).
    layer = bnlab.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    buffers = (layer.running_mean, layer.running_var, layer.num_batches_tracked)
    before = [b._version for b in buffers]
    layer(x).sum().backward()
    assert all(b._version > v for b, v in zip(buffers, before))
    layer.eval()
    before = [b._version for b in buffers]
    layer(x)
    assert [b._version for b in buffers] == before  # evaluation writes nothing
