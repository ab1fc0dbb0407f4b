"""Mixed precision, numerically stable variance, memory formats."""

import numpy as np
import pytest
import torch
from torch import nn

import bnlab
from bnlab import functional as BF


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_half_input_with_float_parameters_matches_torch_mixed_mode(dtype, training):
    ours, theirs = bnlab.BatchNorm2d(4), nn.BatchNorm2d(4)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())
    ours.train(training)
    theirs.train(training)
    x = (torch.randn(8, 4, 6, 6) * 3 + 1).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    assert ya.dtype == dtype and ours.running_mean.dtype == torch.float32
    tol = dict(rtol=1e-2, atol=1e-2)  # one half/bfloat16 rounding of the output
    torch.testing.assert_close(ya, yb, **tol)
    ya.float().sum().backward()
    yb.float().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    assert ours.weight.grad.dtype == torch.float32
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-4, atol=1e-4)


def test_statistics_of_half_input_are_accumulated_in_float32():
    # 4096 values of 2049 = 2048 + 1: fp16 cannot hold 2049, fp16 sums overflow past 65504.
    x = torch.full((4096, 1), 2049.0).to(torch.float16)
    mean, var = BF.batch_stats(x)
    assert mean.dtype == torch.float32
    torch.testing.assert_close(mean, x.float().mean(0))
    torch.testing.assert_close(var, torch.zeros(1))


def test_large_half_values_give_finite_outputs_and_gradients():
    gen = torch.Generator().manual_seed(0)
    x = ((torch.rand(4, 8, 256, 256, generator=gen) * 2 - 1) * 6e4).to(torch.float16)
    x.requires_grad_()
    layer = bnlab.BatchNorm2d(8)
    y = layer(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    y.backward(torch.ones_like(y) / y.numel())
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.weight.grad).all() and torch.isfinite(layer.bias.grad).all()
    assert torch.isfinite(layer.running_var).all()


def test_large_mean_small_std_normalizes_like_float64():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, 8, 8, generator=gen, dtype=torch.float64) * 0.1
    x[:, 0] += 1e4
    x = x.float()  # the fp32 values both sides start from
    y = BF.batch_norm(x, None, None, training=True)
    x64 = x.double()
    mean = x64.mean(dim=(0, 2, 3), keepdim=True)
    var = x64.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    ref = (x64 - mean) / torch.sqrt(var + 1e-5)
    # E[x^2] - E[x]^2 in fp32 would lose every digit of a 0.01 variance next to 1e8.
    _, v = BF.batch_stats(x)
    torch.testing.assert_close(v.double(), var.flatten(), rtol=1e-4, atol=0)
    # An fp32 mean of values near 1e4 is only known to ~5e-4, i.e. 5e-3 of one std.
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-2)
    assert (y.double() - ref).abs().mean() < 2e-3


# planar in one part per channel, planar over several parts (a channel of > 64K values on
# the Triton kernels), channels-last, (N, C) rows in one part and over several parts, and
# sizes no tile divides
OUTLIER_CASES = [((64, 3, 24, 24), False), ((256, 2, 16, 17), False), ((64, 3, 24, 24), True),
                 ((4096, 3), False), ((20000, 3), False), ((37, 3, 5, 13), False),
                 ((37, 5), False)]


@pytest.mark.parametrize("shape, channels_last", OUTLIER_CASES)
def test_statistics_are_exact_when_a_channels_first_value_is_far_from_the_rest(
        shape, channels_last):
    # The fused kernels shift each channel's sums by its first value; an outlier there makes
    # sum(d^2) - sum(d)^2 / n cancel, which only double sums survive (float32 partial sums
    # gave a 1.7e-4 relative error in the running variance and 0.016 in the output; the
    # Triton kernels' float32 sums with that shared shift, an output error of 1.1).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    x[(0, slice(None)) + (0,) * (x.dim() - 2)] = 3e4
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    running_mean, running_var = torch.zeros(c), torch.ones(c)
    y = BF.batch_norm(x, running_mean, running_var, training=True, momentum=1.0)
    x64 = x.double()
    dims = (0,) + tuple(range(2, x.dim()))
    var = x64.var(dim=dims, unbiased=False, keepdim=True)
    ref = (x64 - x64.mean(dim=dims, keepdim=True)) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(running_var.double(), x64.var(dim=dims), rtol=1e-5, atol=0)


@pytest.mark.parametrize("training", [True, False])
def test_channels_last_in_channels_last_out(training):
    layer = bnlab.BatchNorm2d(5).train(training)
    layer.running_mean.uniform_()
    x = torch.randn(4, 5, 6, 7)
    xc = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    xr = x.clone().requires_grad_()
    yc, yr = layer(xc), layer(xr)
    assert yc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(yc, yr, rtol=1e-6, atol=1e-6)
    dy = torch.randn_like(x)
    yc.backward(dy)
    yr.backward(dy)
    assert xc.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-5, atol=1e-6)


def test_channels_last_3d():
    layer = bnlab.BatchNorm3d(3)
    x = torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    assert layer(x).is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 5), (2, 3, 40, 40)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_a_nan_or_inf_poisons_its_channel_as_in_torch(shape, bad, activation):
    x = torch.randn(*shape)
    x[1, 0] = bad
    theirs = torch.nn.BatchNorm1d(3) if len(shape) == 2 else torch.nn.BatchNorm2d(3)
    ours = (bnlab.BatchNorm1d if len(shape) == 2 else bnlab.BatchNorm2d)(3, activation=activation)
    expected = theirs(x)
    expected = torch.relu(expected) if activation else expected
    got = ours(x)
    # channel 0: NaN everywhere, the running variance too (not a NaN clamped away to 0)
    assert got[:, 0].isnan().all() and expected[:, 0].isnan().all()
    assert ours.running_var[0].isnan() and theirs.running_var[0].isnan()
    torch.testing.assert_close(got[:, 1:], expected[:, 1:])
    torch.testing.assert_close(ours.running_var[1:], theirs.running_var[1:])


@pytest.mark.parametrize("shape", [(300000, 2), (30, 2, 10000)])
def test_float64_statistics_stay_exact_with_an_outlier_first(shape, planar_split):
    # In float64 the first-value shift's cancellation shows: a 1e6 outlier first among 3e5
    # values lost ~3e-11 of the running variance (torch: 1e-14); such channels are summed
    # again around their mean (the Triton path has no float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x[(0, 0) + (0,) * (x.dim() - 2)] = 1e6
    c = shape[1]
    running_mean = torch.zeros(c, dtype=torch.float64)
    running_var = torch.ones(c, dtype=torch.float64)
    BF.batch_norm(x, running_mean, running_var, training=True, momentum=1.0)
    dims = (0,) + tuple(range(2, x.dim()))
    exact = np.asarray(x.numpy(), dtype=np.longdouble)
    centred = exact - exact.mean(axis=dims, keepdims=True)
    want = (centred ** 2).sum(axis=dims) / (exact.size // c - 1)
    rel = np.abs((running_var.numpy().astype(np.longdouble) - want) / want)
    assert float(rel.max()) < 1e-13


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 5), (2, 3, 40, 40)])
@pytest.mark.parametrize("where", ["input", "running_mean"])
def test_evaluation_gradients_do_not_depend_on_the_input_as_in_torch(shape, where):
    # In eval dx = dy * weight * invstd: an inf input or a NaN running mean leaves it
    # finite in torch (the fused kernels computed (x - mean) * 0 = NaN there)
    x = torch.randn(*shape)
    theirs = torch.nn.BatchNorm1d(3) if len(shape) == 2 else torch.nn.BatchNorm2d(3)
    ours = (bnlab.BatchNorm1d if len(shape) == 2 else bnlab.BatchNorm2d)(3)
    if where == "input":
        x[1, 0] = float("inf")
    else:
        theirs.running_mean[0] = float("nan")
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    theirs.eval()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    dy = torch.randn(*shape)
    ours(xa).backward(dy)
    theirs(xb).backward(dy)
    assert not xa.grad.isnan().any()
    torch.testing.assert_close(xa.grad, xb.grad)


def test_relu_passes_the_gradient_at_a_nan_as_in_torch():
    x = torch.randn(2, 2, 4, 4)
    x.view(-1)[3] = float("nan")
    ours, theirs = bnlab.BatchNorm2d(2, activation="relu"), torch.nn.BatchNorm2d(2)
    ours(x).sum().backward()
    torch.relu(theirs(x)).sum().backward()
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad)


def test_half_running_statistics_round_once_per_update_as_in_torch():
    # float16 buffers: each update computed in float32 and rounded once (rounded three
    # times, 28% of channels were an ulp off per step and drifted 3x torch's error)
    gen = torch.Generator().manual_seed(0)
    ours, theirs = bnlab.BatchNorm2d(64).half(), nn.BatchNorm2d(64).half()
    for _ in range(20):
        x = (torch.randn(8, 64, 6, 6, generator=gen) * 3 + 1).half()
        ours(x)
        theirs(x)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0, atol=0)
