"""Evaluation mode (running statistics): the backward of an eval forward, and the fused
kernels' inverse standard deviation."""

import pytest
import torch

import bnlab
from bnlab.norm import kernels


def test_fused_eval_backward_uses_the_statistics_its_forward_saw(kernel):
    # torch's layers (and the reference path, which saves the buffers) refuse this backward
    # with a version-counter error; the fused op saves copies of the statistics.
    if kernel != "fused" or kernels.cpu_ops() is None:
        pytest.skip("the fused kernels' own behaviour; runs under the fused parametrisation")
    layer = bnlab.BatchNorm2d(3).eval()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    rm, rv = layer.running_mean.clone(), layer.running_var.clone()
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    dy = torch.randn(4, 3, 5, 5)
    y = layer(x)
    with torch.no_grad():  # e.g. a training step of the same layer before this backward
        layer.running_mean.add_(1)
        layer.running_var.mul_(3)
    y.backward(dy)
    invstd = torch.rsqrt(rv + layer.eps).view(1, 3, 1, 1)
    scale = layer.weight.detach().view(1, 3, 1, 1) * invstd
    torch.testing.assert_close(x.grad, dy * scale, rtol=1e-6, atol=1e-6)
    xhat = (x.detach() - rm.view(1, 3, 1, 1)) * invstd
    torch.testing.assert_close(layer.weight.grad, (dy * xhat).sum((0, 2, 3)), rtol=1e-5,
                               atol=1e-5)


def test_fused_eval_invstd_is_torchs_rsqrt(kernel):
    if kernel != "fused" or kernels.cpu_ops() is None:
        pytest.skip("the fused kernels' own op; runs once, under the fused parametrisation")
    rv = torch.rand(37) * 3 + 1e-6
    x = torch.randn(8, 37)
    _, invstd = torch.ops.bnlab.forward_eval(x, torch.zeros(37), rv, None, None, 1e-5)
    assert torch.equal(invstd, (rv + 1e-5).rsqrt())
