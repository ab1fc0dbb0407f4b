"""Both memory layouts at shapes that reach every branch of their reductions, in float64
against torch. Rows ((M, C): 2-D and channels-last input): channel blocks of 16 (full and
partial), several tiles of 64 rows, inputs large enough to be split between threads.
Planar ((N, C, L)): runs of L shorter than, equal to and longer than a 32-value span, with
and without a remainder, the work split by samples and by channels."""

import pytest
import torch
from torch import nn

import bnlab

SHAPES = [(64, 120), (64, 16), (200, 37), (700, 50), (3, 5),
          (5, 3, 7, 9), (4, 2, 32), (3, 2, 100, 3), (6, 4, 5)]


def assert_step_matches(ours, theirs, x, dy, y_tol, grad_tol):
    """One training step of each: outputs and input gradients agree."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, rtol=y_tol, atol=y_tol)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=grad_tol, atol=grad_tol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", [None, "sigmoid"])
def test_layouts_match_torch_in_float64(shape, activation, planar_split):
    c = shape[1]
    gen = torch.Generator().manual_seed(c)
    theirs = (nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d)(c, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
        theirs.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
    ours_cls = bnlab.BatchNorm1d if len(shape) < 4 else bnlab.BatchNorm2d
    ours = ours_cls(c, dtype=torch.float64, activation=activation)
    ours.load_state_dict(theirs.state_dict())
    reference = nn.Sequential(theirs, nn.Sigmoid() if activation else nn.Identity())
    # Offset far from zero: the shifted sums must not cancel.
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 100
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert_step_matches(ours, reference, x, dy, 1e-10, 1e-9)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-12, atol=1e-12)


def test_channels_last_rows_match_torch_in_float32():
    # (N * H * W, C) = (1200, 40) rows: several tiles, split between threads.
    theirs = nn.BatchNorm2d(40)
    ours = bnlab.BatchNorm2d(40)
    x = torch.randn(12, 40, 10, 10).contiguous(memory_format=torch.channels_last)
    assert_step_matches(ours, theirs, x, torch.randn(12, 40, 10, 10), 1e-5, 1e-4)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


@pytest.mark.parametrize("training", [True, False])
def test_planar_splits_agree_with_more_samples_than_threads_and_fewer(training, planar_split):
    # N = 1: one block of samples; N = 9: blocks of uneven size across two threads.
    for shape in [(1, 3, 40, 40), (9, 4, 10, 12)]:
        theirs = nn.BatchNorm2d(shape[1], dtype=torch.float64).train(training)
        ours = bnlab.BatchNorm2d(shape[1], dtype=torch.float64, activation="sigmoid")
        ours.train(training)
        x = torch.randn(shape, dtype=torch.float64) * 2 + 5
        dy = torch.randn(shape, dtype=torch.float64)
        assert_step_matches(ours, nn.Sequential(theirs, nn.Sigmoid()), x, dy, 1e-10, 1e-9)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-9, atol=1e-10)


def test_odd_strided_input_gives_a_contiguous_output_as_torchs(kernel):
    x = torch.randn(5, 4, 3, 6).permute(0, 2, 1, 3)  # neither contiguous nor channels-last
    dy = torch.randn(5, 3, 4, 6)
    ours, theirs = bnlab.BatchNorm2d(3), nn.BatchNorm2d(3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    assert ya.stride() == yb.stride() and ya.is_contiguous()
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(xa.grad, xb.grad)


def test_per_channel_tensors_of_another_shape_with_c_elements(kernel):
    # torch's forward takes any weight/bias with C elements (its backward only (C,) ones)
    x = torch.randn(4, 3, 5)
    w, b = torch.linspace(0.5, 2, 3), torch.linspace(-1, 1, 3)
    expected = torch.nn.functional.batch_norm(x, None, None, w.reshape(3, 1),
                                              b.reshape(1, 3), True)
    grads = []
    for shapes in (((3, 1), (1, 3)), ((3,), (3,))):
        wa = w.reshape(shapes[0]).clone().requires_grad_()
        ba = b.reshape(shapes[1]).clone().requires_grad_()
        y = bnlab.functional.batch_norm(x, None, None, wa, ba, True)
        torch.testing.assert_close(y, expected)
        (y * torch.arange(5.0)).sum().backward()
        assert wa.grad.shape == shapes[0] and ba.grad.shape == shapes[1]
        grads.append((wa.grad.reshape(-1), ba.grad.reshape(-1)))
    torch.testing.assert_close(grads[0], grads[1])
