"""bnlab layers under torch.compile: traced on the tensor-op path, equal to eager torch."""

import pytest
import torch
from torch import nn

import bnlab


def test_compiled_layer_matches_torch(kernel):
    if kernel == "reference":
        pytest.skip("one compile suffices: under torch.compile both settings trace the same path")
    torch._dynamo.reset()
    ours, theirs = bnlab.BatchNorm2d(3), nn.BatchNorm2d(3)
    compiled = torch.compile(ours)
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = compiled(xa), theirs(xb)
    ya.backward(torch.ones_like(ya) * torch.arange(5.0))
    yb.backward(torch.ones_like(yb) * torch.arange(5.0))
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert ours.num_batches_tracked.item() == 1


def test_compiled_lenet_has_no_graph_breaks(kernel):
    if kernel == "reference":
        pytest.skip("one compile suffices: under torch.compile both settings trace the same path")
    # Dynamo does not trace an autograd.Function with a custom jvp: a break at every layer
    # would run each one eagerly between compiled graphs
    torch._dynamo.reset()
    net = bnlab.models.lenet("bnlab")
    explanation = torch._dynamo.explain(net)(torch.randn(4, 1, 28, 28))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()


def test_compiled_autograd_through_a_compiled_layer_matches_torch(kernel):
    if kernel == "reference":
        pytest.skip("one compile suffices: under torch.compile both settings trace the same path")
    from torch._dynamo import compiled_autograd
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ours, theirs = bnlab.BatchNorm2d(3), nn.BatchNorm2d(3)
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss = (torch.compile(ours)(xa) * torch.arange(5.0)).sum()
    with compiled_autograd._enable(torch.compile):
        loss.backward()
    assert counters["compiled_autograd"]["captures"] == 1  # the backward was compiled
    (theirs(xb) * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-4)
    torch._dynamo.reset()


def test_compiled_autograd_after_an_eager_forward_on_the_tensor_op_path(kernel):
    if kernel != "reference":
        pytest.skip("the C++ autograd nodes have no compiled_args (documented)")
    from torch._dynamo import compiled_autograd

    torch._dynamo.reset()
    ours, theirs = bnlab.BatchNorm2d(3), nn.BatchNorm2d(3)
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss = (ours(xa * 1.5) * torch.arange(5.0)).sum()  # (x * 1.5: a node before the layer)
    with compiled_autograd._enable(torch.compile):
        loss.backward()
    (theirs(xb * 1.5) * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-4)
    torch._dynamo.reset()
