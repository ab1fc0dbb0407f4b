"""A fused activation after batch norm (``activation="relu"|"sigmoid"``): equal to torch's
batch norm followed by torch's activation, on every kernel path."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnlab
from bnlab import functional as BF
from bnlab.norm import convert, convert_sync_batchnorm

ACTS = {"relu": torch.relu, "sigmoid": torch.sigmoid}
SHAPES = [(64, 6, 24, 24), (16, 5), (8, 3, 7), (4, 3, 2, 3, 3)]


def _inputs(shape, dtype):
    g = torch.Generator().manual_seed(0)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=dtype) * 3 + 1).requires_grad_()
    w = (torch.rand(c, generator=g, dtype=dtype) + 0.5).requires_grad_()
    b = torch.randn(c, generator=g, dtype=dtype).requires_grad_()
    return x, w, b


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ["relu", "sigmoid"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_matches_torch_batch_norm_then_activation(kernel, shape, act, training, dtype, tol):
    x, w, b = _inputs(shape, dtype)
    c = shape[1]
    stats = [torch.randn(c, dtype=dtype).abs() + 0.5 for _ in range(2)]
    ours_rm, ours_rv = stats[0].clone(), stats[1].clone()
    ref_rm, ref_rv = stats[0].clone(), stats[1].clone()
    y = BF.batch_norm(x, ours_rm, ours_rv, w, b, training, 0.1, 1e-5, activation=act)
    ref = ACTS[act](F.batch_norm(x, ref_rm, ref_rv, w, b, training, 0.1, 1e-5))
    torch.testing.assert_close(y, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(ours_rm, ref_rm, rtol=tol, atol=tol)
    torch.testing.assert_close(ours_rv, ref_rv, rtol=tol, atol=tol)
    g = torch.randn_like(ref)
    for a, e in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        scale = e.abs().max()
        torch.testing.assert_close(a / scale, e / scale, rtol=tol, atol=tol)


@pytest.mark.parametrize("act", ["relu", "sigmoid"])
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_finite_differences(kernel, act, training):
    x = (torch.randn(4, 3, 5, 5, dtype=torch.float64) + 0.3).requires_grad_()
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        return BF.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, activation=act)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_fused_layer_keeps_only_the_input_for_backward(kernel):
    """With the fused kernels the activation's output is not kept (recomputed in backward):
    a fused layer keeps one input-sized tensor where BN + nn.Sigmoid keep two."""
    if kernel != "fused":
        pytest.skip("the reference path is batch norm followed by torch's activation")
    x = torch.randn(64, 6, 24, 24, requires_grad=True)
    kept = []

    def pack(t):
        kept.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        bnlab.BatchNorm2d(6, activation="sigmoid")(x)
    fused = sum(n for n in kept if n == x.numel())
    kept.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.sigmoid(nn.BatchNorm2d(6)(x))
    assert fused == x.numel()
    assert sum(n for n in kept if n == x.numel()) == 2 * x.numel()


def test_module_setting_repr_and_state_dict():
    layer = bnlab.BatchNorm2d(4, activation="sigmoid")
    assert "activation=sigmoid" in repr(layer)
    assert "activation" not in repr(bnlab.BatchNorm2d(4))
    assert layer.state_dict().keys() == nn.BatchNorm2d(4).state_dict().keys()
    with pytest.raises(ValueError, match="activation must be None, 'relu' or 'sigmoid'"):
        bnlab.BatchNorm1d(4, activation="tanh")
    with pytest.raises(ValueError, match="activation must be"):
        BF.batch_norm(torch.randn(4, 3), None, None, training=True, activation="gelu")


def test_empty_batch_and_eval_mode():
    layer = bnlab.BatchNorm1d(3, activation="relu")
    out = layer(torch.randn(0, 3))
    assert out.shape == (0, 3)
    layer.eval()
    x = torch.randn(5, 3)
    torch.testing.assert_close(layer(x), torch.relu(x / (1 + 1e-5) ** 0.5))


def test_conversion_keeps_or_refuses_the_activation():
    model = nn.Sequential(nn.Linear(3, 4), bnlab.BatchNorm1d(4, activation="sigmoid"))
    with pytest.raises(ValueError, match="bnlab.BatchNorm1d applies activation='sigmoid', "
                                         "which torch.nn.BatchNorm1d cannot"):
        convert(model, to="torch")
    synced = convert_sync_batchnorm(model)
    assert isinstance(synced[1], bnlab.SyncBatchNorm) and synced[1].activation == "sigmoid"
    x = torch.randn(8, 3)
    ref = torch.sigmoid(F.batch_norm(synced[0](x), None, None, synced[1].weight,
                                     synced[1].bias, True))
    torch.testing.assert_close(synced(x), ref)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_double_backward_keeps_the_bias_in_the_graph_as_torch_does(activation, kernel):
    # With a fixed output gradient, relu's bias enters the first-order gradients only
    # through relu's mask: torch's relu still links it (a zero derivative), so asking for it
    # gives zeros, not "not used in the graph".
    gen = torch.Generator().manual_seed(1)
    data = (torch.randn(6, 3, 4, generator=gen), torch.rand(3, generator=gen) + 0.5,
            torch.randn(3, generator=gen))
    dy = torch.randn(6, 3, 4, generator=gen)
    results = []
    for use_torch in (False, True):
        x, w, b = (t.clone().requires_grad_() for t in data)
        if use_torch:
            act = torch.relu if activation == "relu" else torch.sigmoid
            y = act(torch.nn.functional.batch_norm(x, None, None, w, b, True))
        else:
            y = BF.batch_norm(x, None, None, w, b, True, activation=activation)
        gx, gw = torch.autograd.grad(y, (x, w), dy, create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum() + gw.pow(2).sum(), (x, w, b)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
