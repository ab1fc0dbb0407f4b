"""bnlab.BatchNorm1d/2d/3d against torch.nn.BatchNorm1d/2d/3d, step by step."""

import itertools

import pytest
import torch
from torch import nn

import bnlab

SHAPES = {  # input rank -> (bnlab class, torch class, per-sample shape after (N, C))
    2: (bnlab.BatchNorm1d, nn.BatchNorm1d, ()),
    3: (bnlab.BatchNorm1d, nn.BatchNorm1d, (7,)),
    4: (bnlab.BatchNorm2d, nn.BatchNorm2d, (5, 6)),
    5: (bnlab.BatchNorm3d, nn.BatchNorm3d, (3, 4, 5)),
}
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
CHANNELS = 4


def make_pair(rank, dtype, **kwargs):
    ours_cls, theirs_cls, _ = SHAPES[rank]
    ours = ours_cls(CHANNELS, dtype=dtype, **kwargs)
    theirs = theirs_cls(CHANNELS, dtype=dtype, **kwargs)
    if ours.affine:
        with torch.no_grad():
            ours.weight.copy_(torch.linspace(0.5, 1.5, CHANNELS))
            ours.bias.copy_(torch.linspace(-1.0, 1.0, CHANNELS))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def assert_same_state(ours, theirs, tol):
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert ours_sd.keys() == theirs_sd.keys()
    for key in ours_sd:
        torch.testing.assert_close(ours_sd[key], theirs_sd[key], **tol, msg=key)


def step(ours, theirs, x, tol, gen):
    """One forward+backward of both layers on the same input; compare everything."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, **tol)
    dy = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    if ours.affine:
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **tol)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, **tol)
        for p in (*ours.parameters(), *theirs.parameters()):
            p.grad = None
    assert_same_state(ours, theirs, tol)


@pytest.mark.parametrize(
    "rank, affine, track, momentum, dtype",
    list(
        itertools.product(
            SHAPES, [True, False], [True, False], [0.1, 0.7, None], [torch.float32, torch.float64]
        )
    ),
)
def test_matches_torch_over_training_then_eval(rank, affine, track, momentum, dtype):
    tol = TOL[dtype]
    ours, theirs = make_pair(rank, dtype, affine=affine, track_running_stats=track,
                             momentum=momentum)
    gen = torch.Generator().manual_seed(rank)
    per_sample = SHAPES[rank][2]
    for batch in (8, 5, 16, 3, 9, 2):  # >= 5 steps with varying batch sizes
        x = torch.randn((batch, CHANNELS, *per_sample), generator=gen, dtype=dtype) * 3 + 2
        step(ours, theirs, x, tol, gen)
    ours.eval()
    theirs.eval()
    # With running statistics eval works on a batch of one; without, eval uses batch stats.
    for batch in (4, 1) if track else (4, 3):
        x = torch.randn((batch, CHANNELS, *per_sample), generator=gen, dtype=dtype) * 3 + 2
        step(ours, theirs, x, tol, gen)


@pytest.mark.parametrize("rank", SHAPES)
def test_no_grad_in_train_mode_still_uses_and_updates_batch_statistics(rank):
    ours, theirs = make_pair(rank, torch.float32)
    x = torch.randn((6, CHANNELS, *SHAPES[rank][2])) + 5
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert ours.num_batches_tracked.item() == 1
    assert not torch.allclose(ours.running_mean, torch.zeros(CHANNELS))
    assert_same_state(ours, theirs, TOL[torch.float32])


def test_tracking_switched_off_after_construction_behaves_as_torch():
    ours, theirs = make_pair(4, torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((8, CHANNELS, 5, 6), generator=gen, dtype=torch.float64)
    step(ours, theirs, x, TOL[torch.float64], gen)
    ours.track_running_stats = theirs.track_running_stats = False
    for mode in (True, False):  # train: batch stats, buffers frozen; eval: running stats
        ours.train(mode)
        theirs.train(mode)
        step(ours, theirs, x * 2 + 1, TOL[torch.float64], gen)
    assert ours.num_batches_tracked.item() == 1


def test_cumulative_average_is_the_mean_of_batch_statistics():
    bn = bnlab.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(10, 3, generator=gen, dtype=torch.float64) * 2 + 1 for _ in range(4)]
    for x in batches:
        bn(x)
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(0) for x in batches]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(0) for x in batches]).mean(0))
    bn.reset_running_stats()  # the average restarts
    bn(batches[0])
    torch.testing.assert_close(bn.running_mean, batches[0].mean(0))


def test_running_stats_by_hand():
    bn = bnlab.BatchNorm1d(2, momentum=0.25, dtype=torch.float64)
    x = torch.tensor([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]], dtype=torch.float64)
    bn(x)
    # mean (3, 30); unbiased var (4, 700)
    torch.testing.assert_close(bn.running_mean, torch.tensor([0.75, 7.5], dtype=torch.float64))
    torch.testing.assert_close(bn.running_var,
                               torch.tensor([0.75 + 1.0, 0.75 + 175.0], dtype=torch.float64))
    assert bn.num_batches_tracked.item() == 1


def test_reset_parameters_and_extra_repr():
    ours, theirs = make_pair(4, torch.float32, momentum=None)
    ours(torch.randn(4, CHANNELS, 2, 2))
    ours.reset_parameters()
    fresh = bnlab.BatchNorm2d(CHANNELS, momentum=None)
    assert_same_state(ours, fresh, TOL[torch.float32])
    assert ours.extra_repr() == theirs.extra_repr()
    assert repr(ours).startswith("BatchNorm2d(4, eps=1e-05, momentum=None")
