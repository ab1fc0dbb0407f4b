"""LeNet's layers on bnlab's kernels: 2x2 average pooling bit-identical to torch's, the
single-channel convolution equal to torch's to rounding; torch's own wherever they do not
apply."""

import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.models import lenet
from bnlab.models.kernels import conv_ops, layer_kernel_status, loader, pool_ops
from bnlab.models.layers import AvgPool2d, Conv2d, fast_conv_applies, fast_pool_applies
from bnlab.norm.kernels import build


def _require(name: str, ops):
    if ops is None:
        status = layer_kernel_status()[name]
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip(f"no C++ compiler for the {name} kernel: {status}")
        pytest.fail(f"the {name} kernel failed to build: {status}")
    return ops


@pytest.fixture
def ops():
    return _require("pool", pool_ops())


@pytest.fixture
def cops():
    return _require("conv", conv_ops())


SHAPES = [(64, 6, 24, 24), (64, 16, 8, 8), (3, 2, 7, 5), (2, 3, 2, 2), (1, 1, 3, 9)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_gradient_equal_torch_bit_for_bit(ops, shape, dtype):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    ours, theirs = AvgPool2d()(x), F.avg_pool2d(x, 2)
    assert ours.grad_fn.name() == "BnlabAvgPool2x2Backward"
    assert torch.equal(ours, theirs)
    g = torch.randn_like(theirs)
    assert torch.equal(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(theirs, x, g)[0])


def test_gradient_matches_finite_differences(ops):
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.avg_pool2x2, (x,))
    assert torch.autograd.gradgradcheck(ops.avg_pool2x2, (x,))


def test_hand_computed_values(ops):
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert ops.avg_pool2x2(x).view(-1).tolist() == [2.5, 4.5, 10.5, 12.5]
    (dx,) = torch.autograd.grad(ops.avg_pool2x2(x.requires_grad_()).sum(), x)
    assert torch.equal(dx, torch.full((1, 1, 4, 4), 0.25))


def test_no_grad_and_inference_mode(ops):
    x = torch.randn(4, 3, 6, 6)
    with torch.inference_mode():
        assert torch.equal(AvgPool2d()(x), F.avg_pool2d(x, 2))
    with torch.no_grad():
        assert AvgPool2d()(x.requires_grad_()).grad_fn is None


@pytest.mark.parametrize("make", [
    lambda: torch.randn(2, 3, 6, 6, dtype=torch.float16),
    lambda: torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last),
    lambda: torch.randn(2, 3, 6, 6)[:, :, :, ::2],
    lambda: torch.randn(3, 6, 6),
])
def test_other_inputs_take_torchs_pooling(ops, make):
    x = make()
    assert not fast_pool_applies(x)
    ref = F.avg_pool2d(x.float(), 2)
    torch.testing.assert_close(AvgPool2d()(x).float(), ref, atol=1e-3, rtol=1e-3)


def test_too_small_input_gets_torchs_error(ops):
    x = torch.randn(2, 3, 1, 6)
    assert not fast_pool_applies(x)
    with pytest.raises(RuntimeError, match="too small"):
        AvgPool2d()(x)


def test_reference_kernel_setting_uses_torch(ops, monkeypatch):
    monkeypatch.setenv("BNLAB_KERNEL", "reference")
    y = AvgPool2d()(torch.randn(2, 3, 6, 6, requires_grad=True))
    assert y.grad_fn.name() == "AvgPool2DBackward0"


def test_raw_kernels_reject_bad_input(ops):
    with pytest.raises(RuntimeError, match="must be 4-D"):
        ops.forward(torch.randn(3, 4, 4))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.forward(torch.zeros(1, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="grad_out has shape"):
        ops.backward(torch.randn(1, 1, 3, 3), [1, 1, 4, 4])


def test_unavailable_kernel_falls_back(monkeypatch):
    monkeypatch.setattr(loader, "_load", lambda name: (None, "RuntimeError: no C++ compiler"))
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = AvgPool2d()(x)
    assert y.grad_fn.name() == "AvgPool2DBackward0"
    assert torch.equal(y, F.avg_pool2d(x, 2))


def test_module_looks_like_torchs():
    assert isinstance(AvgPool2d(), nn.AvgPool2d)
    assert repr(AvgPool2d()) == repr(nn.AvgPool2d(kernel_size=2, stride=2))
    assert AvgPool2d().state_dict() == {}
    assert any(isinstance(m, AvgPool2d) for m in lenet("none"))
    assert isinstance(lenet("torch")[0], Conv2d)


def test_libraries_are_cached_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLAB_KERNEL_CACHE", str(tmp_path))
    pool, conv = (build.library_path(loader.SOURCES[n]) for n in ("pool", "conv"))
    assert (pool.name, conv.name) == ("bnlab_pool_kernels.so", "bnlab_conv_kernels.so")
    assert len({pool, conv, build.library_path()}) == 3


# --- convolution ---

CONV_CASES = [  # (N, C, H, W, O, k)
    (64, 1, 28, 28, 6, 5),  # LeNet's first layer
    (37, 6, 12, 12, 16, 5),  # more channels, a partial block of samples
    (3, 2, 7, 6, 4, 3),
    (1, 3, 5, 5, 2, 5),  # kernel as large as the input
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_matches_torch(cops, case, bias):
    n, c, h, w, o, k = case
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        x = torch.randn(n, c, h, w, dtype=dtype, requires_grad=True)
        wt = torch.randn(o, c, k, k, dtype=dtype, requires_grad=True)
        b = torch.randn(o, dtype=dtype, requires_grad=True) if bias else None
        ours, theirs = cops.conv2d(x, wt, b), F.conv2d(x, wt, b)
        assert ours.grad_fn.name() == "BnlabConv2dBackward"
        scale = theirs.abs().max()
        torch.testing.assert_close(ours / scale, theirs / scale, rtol=0, atol=tol)
        g = torch.randn_like(theirs)
        inputs = (x, wt) + ((b,) if bias else ())
        grads = zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(theirs, inputs, g))
        for a, e in grads:
            torch.testing.assert_close(a / e.abs().max(), e / e.abs().max(), rtol=0, atol=tol)


def test_conv_gradients_match_finite_differences(cops):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cops.conv2d, (x, w, b))
    assert torch.autograd.gradgradcheck(cops.conv2d, (x, w, b))


def test_conv_hand_computed_values(cops):
    x = torch.arange(9.0).view(1, 1, 3, 3)
    w = torch.tensor([[[[1.0, 0.0], [0.0, -1.0]]]])  # x[i, j] - x[i+1, j+1]
    y = cops.conv2d(x, w, torch.tensor([10.0]))
    assert y.view(-1).tolist() == [6.0, 6.0, 6.0, 6.0]


def test_conv_only_the_needed_gradients(cops):
    x = torch.randn(4, 1, 8, 8)  # input without grad, as LeNet's images
    conv = Conv2d(1, 3, 3)
    conv(x).sum().backward()
    ref = nn.Conv2d(1, 3, 3)
    ref.load_state_dict(conv.state_dict())
    ref(x).sum().backward()
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad)
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad)


@pytest.mark.parametrize("conv", [
    lambda: Conv2d(3, 4, 3),  # several input channels: oneDNN is faster
    lambda: Conv2d(1, 4, 3, padding=1),
    lambda: Conv2d(1, 4, 3, stride=2),
    lambda: Conv2d(1, 4, 3, dilation=2),
    lambda: Conv2d(1, 4, 3).double(),  # float32 input, float64 weight
])
def test_other_convolutions_take_torchs(cops, conv):
    layer = conv()
    x = torch.randn(2, layer.in_channels, 9, 9, requires_grad=True)
    assert not fast_conv_applies(layer, x)
    if layer.weight.dtype == x.dtype:
        assert layer(x).grad_fn.name() == "ConvolutionBackward0"


def test_conv_under_autocast_is_torchs(cops):
    conv = Conv2d(1, 6, 5)
    x = torch.rand(2, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast_conv_applies(conv, x)
        assert conv(x).dtype == torch.bfloat16


def test_conv_module_is_torchs(cops):
    torch.manual_seed(0)
    ours = Conv2d(1, 6, 5)
    torch.manual_seed(0)
    theirs = nn.Conv2d(1, 6, 5)
    assert repr(ours) == repr(theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(),
                                                 theirs.state_dict().values()))
    x = torch.rand(8, 1, 28, 28)
    assert fast_conv_applies(ours, x)
    torch.testing.assert_close(ours(x), theirs(x))
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), theirs(x))


def test_conv_raw_kernels_reject_bad_input(cops):
    with pytest.raises(RuntimeError, match="must be 4-D"):
        cops.forward(torch.randn(3, 4, 4), torch.randn(2, 3, 2, 2), None)
    with pytest.raises(RuntimeError, match="input channels"):
        cops.forward(torch.randn(1, 2, 4, 4), torch.randn(2, 3, 2, 2), None)
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        cops.forward(torch.randn(1, 1, 2, 4), torch.randn(2, 1, 3, 3), None)
    with pytest.raises(RuntimeError, match="float32 or both float64"):
        cops.forward(torch.randn(1, 1, 4, 4), torch.randn(2, 1, 3, 3).double(), None)


# --- transforms and tracing: torch's ops run (the kernels have no rules for them) ---


def _twin(model):
    """The same LeNet on torch's own layers (nn.Conv2d/nn.AvgPool2d), same weights."""
    twin = nn.Sequential(*[
        nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size) if isinstance(m, Conv2d)
        else nn.AvgPool2d(2, 2) if isinstance(m, AvgPool2d) else m for m in model])
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def test_torch_func_and_forward_mode_see_torchs_ops(ops, cops):
    import torch.autograd.forward_ad as fwAD
    from torch.func import grad, jvp

    model = lenet("torch").eval()
    twin = _twin(model)
    x, t = torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(grad(lambda i: model(i).sum())(x),
                               grad(lambda i: twin(i).sum())(x))
    torch.testing.assert_close(jvp(model, (x,), (t,))[1], jvp(twin, (x,), (t,))[1])
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(model(fwAD.make_dual(x, t))).tangent
    torch.testing.assert_close(tangent, jvp(twin, (x,), (t,))[1])


def test_traces_hold_torchs_ops_not_bnlabs(ops, cops):
    model = lenet("none").eval()
    x = torch.randn(2, 1, 28, 28)
    traced = torch.jit.trace(model, x)
    graph_text = str(traced.inlined_graph)
    assert "bnlab_conv::" not in graph_text and "bnlab_pool::" not in graph_text  # torch ops
    torch.testing.assert_close(traced(x), model(x))
    graph = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(graph(x), model(x))


def test_batched_gradients_equal_torchs(ops, cops):
    # autograd.grad(is_grads_batched=True) hands the kernels' backward batched gradients
    # (wrappers without storage of their own): torch's ops take those.
    model = lenet("none").train()
    twin = _twin(model).train()
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    seeds = torch.randn(3, 2, 10)
    grads = [torch.autograd.grad(m(x), (x, m[0].weight), seeds, is_grads_batched=True)
             for m in (model, twin)]
    assert model[0](x).grad_fn.name() == "BnlabConv2dBackward"
    for ours, theirs in zip(*grads):
        assert ours.shape[0] == 3
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_a_block_of_negative_zeros_averages_to_positive_zero_as_in_torch(ops):
    x = torch.full((1, 2, 4, 4), -0.0)
    ours, theirs = AvgPool2d()(x), F.avg_pool2d(x, 2)
    assert torch.equal(torch.signbit(ours), torch.signbit(theirs))  # torch sums from +0


def test_pool_settings_changed_after_construction_are_honoured(ops):
    pool = AvgPool2d()
    pool.ceil_mode = True
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(pool(x), F.avg_pool2d(x, 2, ceil_mode=True))
    assert pool(x).shape == (1, 2, 3, 3)
    assert repr(AvgPool2d(3, 1)) == repr(nn.AvgPool2d(3, 1))  # torch's signature


def test_a_channels_last_convolution_gives_torchs_output_format(cops):
    conv, ref = Conv2d(1, 3, 3), nn.Conv2d(1, 3, 3)
    ref.load_state_dict(conv.state_dict())
    conv, ref = (m.to(memory_format=torch.channels_last) for m in (conv, ref))
    assert conv.weight.is_contiguous()  # both ways, with one input channel: strides differ
    x = torch.randn(2, 1, 8, 8)
    ours, theirs = conv(x), ref(x)
    assert ours.stride() == theirs.stride()  # channels-last, as torch's
    torch.testing.assert_close(ours, theirs)


def test_empty_channels_get_torchs_error(ops, cops):
    with pytest.raises(RuntimeError):
        F.avg_pool2d(torch.randn(2, 0, 4, 4), 2)  # torch's own, the reference
    with pytest.raises(RuntimeError):
        AvgPool2d()(torch.randn(2, 0, 4, 4))
    with pytest.raises(RuntimeError):
        nn.Conv2d(1, 0, 3)(torch.randn(2, 1, 8, 8))
    with pytest.raises(RuntimeError):
        Conv2d(1, 0, 3)(torch.randn(2, 1, 8, 8))


def test_a_parametrized_weight_is_computed_once_per_call(cops):
    from torch.nn.utils import parametrize

    class Counting(nn.Module):
        calls = 0

        def forward(self, w):
            Counting.calls += 1
            return w

    for x in (torch.randn(2, 1, 8, 8), torch.randn(2, 3, 8, 8)):  # bnlab's kernel; torch's
        conv = Conv2d(x.shape[1], 4, 3)
        parametrize.register_parametrization(conv, "weight", Counting())
        Counting.calls = 0
        conv(x)
        assert Counting.calls == 1  # as nn.Conv2d (spectral_norm stepped twice a call)


def test_one_channel_channels_last_input_gives_torchs_output_format(ops, cops):
    x = torch.randn(2, 8, 8, 1).permute(0, 3, 1, 2)  # channels-last strides, one channel
    assert x.is_contiguous()  # both ways: only the strides tell them apart
    conv, ref = Conv2d(1, 3, 3), nn.Conv2d(1, 3, 3)
    ref.load_state_dict(conv.state_dict())
    for ours, theirs in ((conv(x), ref(x)), (AvgPool2d()(x), F.avg_pool2d(x, 2))):
        assert ours.stride() == theirs.stride()
        torch.testing.assert_close(ours, theirs)
