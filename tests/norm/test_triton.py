"""The Triton path's own cases: the two-launch (partial sums) layout, the choice of kernel,
double backward, and — where there is a GPU — parity with torch's CUDA batch norm.

Without a GPU the kernels run in Triton's interpreter (set up by conftest.py); the shapes
stay small because it is slow.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm import functional as BF
from bnlab.norm import gpu, gpu_plan
from bnlab.norm.kernels import KernelUnavailable, cpu_ops

CUDA = torch.cuda.is_available()
# The Triton path's backward: its C++ node, or where that cannot be built its Function.
TRITON_NODES = ("BnlabTritonBatchNormBackward", "TritonBatchNormFunctionBackward")


def triton_node(y: torch.Tensor) -> bool:
    """Whether ``y`` was made by the Triton path (its backward node is the path's own)."""
    return y.grad_fn is not None and y.grad_fn.name() in TRITON_NODES


@pytest.fixture(autouse=True)
def only_once(kernel):
    if kernel != "triton":
        pytest.skip("the Triton path's own tests run once, under the triton parametrisation")


@pytest.fixture
def split_channels(monkeypatch):
    """Small limits, so small channels take the two-launch partial-sums path."""
    monkeypatch.setattr(gpu_plan, "LOCAL_LIMIT", 16)
    monkeypatch.setattr(gpu_plan, "MIN_PART", 16)
    gpu_plan.plan.cache_clear()
    yield
    gpu_plan.plan.cache_clear()


def pair(shape, activation=None, momentum=0.1, device="cpu"):
    channels = shape[1]
    torch_cls = nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d
    ours = (bnlab.BatchNorm1d if len(shape) < 4 else bnlab.BatchNorm2d)(
        channels, momentum=momentum, activation=activation, device=device)
    theirs = torch_cls(channels, momentum=momentum, device=device)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        theirs.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        theirs.bias.copy_(torch.randn(channels, generator=gen))
    ours.load_state_dict(theirs.state_dict())
    act = {None: nn.Identity(), "relu": nn.ReLU(), "sigmoid": nn.Sigmoid()}[activation]
    return ours, nn.Sequential(theirs, act)


def assert_steps_match(shape, activation=None, dtype=torch.float32, device="cpu", steps=2,
                       tol=None, momentum=0.1):
    """Training steps then an eval step: outputs, gradients, buffers all match torch's."""
    ours, theirs = pair(shape, activation, momentum, device)
    tol = tol or {"rtol": 1e-5, "atol": 1e-5}
    gen = torch.Generator().manual_seed(0)
    for step in range(steps + 1):
        training = step < steps
        ours.train(training)
        theirs.train(training)
        x = (torch.randn(shape, generator=gen) * 2 + 1).to(device, dtype)
        dy = torch.randn(shape, generator=gen).to(device, dtype)
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        pre = theirs[0](xb.float())
        ya, yb = ours(xa), theirs[1](pre).to(dtype)
        torch.testing.assert_close(ya, yb, **tol)
        ya.backward(dy)
        yb.backward(dy)
        # Where relu's input is ~0 the two sides' rounding may fall on either side of the
        # kink (seen once in 51M elements): those gradients are compared nowhere.
        away = pre.abs() > 1e-4 if activation == "relu" else torch.ones_like(pre, dtype=bool)
        torch.testing.assert_close(xa.grad[away], xb.grad[away], **tol)
    # Sums over up to 800k float32 terms (the largest shape): torch's own differ by ~2e-4.
    torch.testing.assert_close(ours.weight.grad, theirs[0].weight.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, theirs[0].bias.grad, rtol=1e-3, atol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs[0], name))
    assert triton_node(ya)


@pytest.mark.parametrize("shape", [(6, 4, 7, 7), (9, 3, 5), (33, 2, 4, 4), (40, 3), (50, 70)])
@pytest.mark.parametrize("activation", [None, "sigmoid"])
def test_partial_sums_path_matches_torch(split_channels, shape, activation):
    n, c, *spatial = shape
    for budget in (2048, 1024):  # forward, backward
        assert gpu_plan.plan(n, c, torch.Size(spatial).numel(), True, budget).parts > 1  # split
    assert_steps_match(shape, activation)


@pytest.mark.parametrize("shape", [(300, 5), (40, 3, 100), (2, 70)])
def test_loops_over_several_tiles_match_torch(shape):
    # (300, 5): 2 row tiles; (40, 3, 100): 3 row tiles of 128-wide masked columns;
    # (2, 70): 3 programs of 32 channels, the last part-masked.
    assert_steps_match(shape, "relu")


@pytest.mark.parametrize("shape, memory_format", [
    ((6, 5, 4, 3), torch.channels_last), ((3, 4, 2, 3, 5), torch.channels_last_3d)])
@pytest.mark.parametrize("activation", [None, "sigmoid"])
def test_channels_last_runs_as_rows_and_matches_torch(shape, memory_format, activation):
    ours_cls, torch_cls = ((bnlab.BatchNorm2d, nn.BatchNorm2d) if len(shape) == 4
                           else (bnlab.BatchNorm3d, nn.BatchNorm3d))
    ours, theirs = ours_cls(shape[1], activation=activation), torch_cls(shape[1])
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())
    act = torch.sigmoid if activation else (lambda t: t)
    x = torch.randn(shape) * 3 + 1
    dy = torch.randn(shape)  # a contiguous gradient for the channels-last output
    xa = x.contiguous(memory_format=memory_format).requires_grad_()
    xb = x.clone().requires_grad_()
    ya, yb = ours(xa), act(theirs(xb))
    assert triton_node(ya)
    assert ya.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    ya.backward(dy)
    yb.backward(dy)
    assert xa.grad.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_cumulative_momentum_matches_torch():
    assert_steps_match((8, 3, 4, 4), momentum=None, steps=3)


def test_half_and_bfloat16_match_torch_to_their_rounding():
    for dtype in (torch.float16, torch.bfloat16):
        tol = {"rtol": 2e-2, "atol": 2e-2}
        ours, theirs = pair((16, 3, 5))
        x = torch.randn(16, 3, 5).to(dtype)
        y = ours(x)
        assert y.dtype == dtype and triton_node(y)
        torch.testing.assert_close(y.float(), theirs(x.float()), **tol)


def test_blocks_are_powers_of_two_and_divide_the_runs():
    for n, s in [(64, 576), (256, 3136), (64, 64), (5, 49), (3, 7), (2, 100_000)]:
        block_n, block_s = gpu_plan._planar_blocks(n, s, 2048)
        assert block_n & (block_n - 1) == 0 and block_s & (block_s - 1) == 0
        assert block_n * block_s <= 2048
        if s % 32 == 0:
            assert s % block_s == 0  # no masked-off lanes
        else:
            assert block_s >= min(s, 2048)  # a run in one tile
    for n, c, s in [(256, 64, 3136), (64, 6, 576), (1, 3, 10**6), (1000, 1, 100),
                    (65536, 64, 1), (64, 120, 1)]:
        p = gpu_plan.plan(n, c, s, True, 2048)
        assert 1 <= p.parts <= n
        assert (p.parts - 1) * p.rows_per_part < n <= p.parts * p.rows_per_part  # rows covered
        per_part = p.rows_per_part * (min(c, p.block_x) if s == 1 else s)
        assert p.parts == 1 or per_part >= gpu_plan.MIN_PART
    assert gpu_plan.plan(65536, 64, 1, True, 2048).parts > 1  # a tall (N, C) batch is spread out
    assert gpu_plan.plan(64, 120, 1, True, 2048).parts == 1  # LeNet's: one launch each way


def test_double_backward_matches_the_reference_path():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, 4, generator=gen)
    w = torch.rand(3, generator=gen) + 0.5
    b = torch.randn(3, generator=gen)
    results = []
    for kernel in ("triton", "reference"):
        for activation in (None, "sigmoid"):
            xa, wa, ba = (t.clone().requires_grad_() for t in (x, w, b))
            y = BF.batch_norm(xa, None, None, wa, ba, training=True, kernel=kernel,
                              activation=activation)
            gx, gw = torch.autograd.grad((y * y).sum(), (xa, wa), create_graph=True)
            results.append(torch.autograd.grad(gx.pow(2).sum() + gw.sum(), (xa, wa, ba)))
    for ours, ref in zip(results[:2], results[2:]):
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_input_without_grad_gets_parameter_gradients_only():
    ours, theirs = pair((8, 3, 6))
    x = torch.randn(8, 3, 6)
    ours(x).sum().backward()
    theirs(x).sum().backward()
    torch.testing.assert_close(ours.weight.grad, theirs[0].weight.grad)
    torch.testing.assert_close(ours.bias.grad, theirs[0].bias.grad)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "nothing_requires_grad"])
def test_calls_without_gradients_skip_autograd_and_match_torch(context, monkeypatch):
    calls = []
    monkeypatch.setattr(gpu.TritonBatchNormFunction, "apply",
                        lambda *args: calls.append(args))
    monkeypatch.setattr(gpu, "_node", lambda: SimpleNamespace(attach=calls.append))
    ours, theirs = pair((6, 3, 5), "relu")
    x = torch.randn(6, 3, 5)
    guard = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
             "nothing_requires_grad": torch.enable_grad}[context]
    if context == "nothing_requires_grad":
        for m in (ours, theirs):
            m.requires_grad_(False)
    for training in (True, False):
        ours.train(training)
        theirs.train(training)
        with guard():
            y, expected = ours(x), theirs(x)
        assert y.grad_fn is None and not y.requires_grad
        torch.testing.assert_close(y, expected)
    assert calls == []  # the kernels ran without an autograd node or Function
    state, reference = ours.state_dict(), theirs[0].state_dict()
    for key in reference:
        torch.testing.assert_close(state[key], reference[key])


def test_calls_with_gradients_record_the_triton_node():
    ours, _ = pair((6, 3, 5))
    ours.weight.requires_grad_(False)
    ours.bias.requires_grad_(False)
    assert ours(torch.randn(6, 3, 5)).grad_fn is None
    y = ours(torch.randn(6, 3, 5, requires_grad=True))
    assert triton_node(y)
    ours.bias.requires_grad_(True)
    assert triton_node(ours(torch.randn(6, 3, 5)))


@pytest.fixture
def function_path(monkeypatch):
    """The Triton path as where its C++ node cannot be built: a torch.autograd.Function."""
    monkeypatch.setattr(gpu, "_node", lambda: None)


@pytest.mark.parametrize("shape, activation", [((6, 3, 5), None), ((7, 4), "sigmoid"),
                                               ((5, 2, 3, 3), "relu")])
def test_the_function_path_matches_torch(function_path, shape, activation):
    assert_steps_match(shape, activation)


def test_the_node_is_built_where_the_fused_kernels_are():
    if cpu_ops() is None:
        pytest.skip("no C++ compiler here")
    assert gpu._node() is not None, gpu.node_status()
    assert gpu.node_status().startswith("loaded ")


@pytest.mark.parametrize("path", ["node", "function"])
def test_double_backward_of_either_path_matches_the_reference(path, monkeypatch):
    if path == "function":
        monkeypatch.setattr(gpu, "_node", lambda: None)
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(5, 3, 4, generator=gen), torch.rand(3, generator=gen)
    b = torch.randn(3, generator=gen)
    results = []
    for kernel in ("triton", "reference"):
        xa, wa, ba = (t.clone().requires_grad_() for t in (x, w, b))
        y = BF.batch_norm(xa, None, None, wa, ba, training=True, kernel=kernel,
                          activation="relu")
        assert triton_node(y) == (kernel == "triton")
        gx, gw, gb = torch.autograd.grad((y * y).sum(), (xa, wa, ba), create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum() + (gw * gb).sum(), (xa, wa, ba)))
    for ours, ref in zip(*results):  # (float32 sums of terms up to ~1e3)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def _layer_output(requires_grad_x=True):
    layer = bnlab.BatchNorm1d(3)
    x = torch.randn(6, 3, 4, requires_grad=requires_grad_x)
    return layer, x, layer(x)


def test_the_node_refuses_a_second_backward_and_allows_it_with_retain_graph():
    _, x, y = _layer_output()
    assert triton_node(y)
    y.sum().backward(retain_graph=True)
    first = x.grad.clone()
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()


def test_the_node_sees_an_input_modified_in_place_after_forward():
    layer = bnlab.BatchNorm1d(3)
    leaf = torch.randn(6, 3, requires_grad=True)
    x = leaf * 1
    y = layer(x)
    x.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_the_node_packs_its_saved_tensors_through_saved_tensor_hooks():
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer, x, y = _layer_output()
    y.pow(2).sum().backward()
    assert torch.Size([6, 3, 4]) in packed and torch.Size([3]) in packed  # x, weight
    expected = torch.func.grad(
        lambda v: torch.nn.functional.batch_norm(v, None, None, layer.weight.detach(),
                                                 layer.bias.detach(), True).pow(2).sum())(
        x.detach())
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-5)


def test_an_error_in_the_nodes_backward_reaches_the_caller(monkeypatch):
    def broken(*args):
        raise ValueError("launch failed: out of resources")

    monkeypatch.setattr(gpu, "backward", broken)
    _, _, y = _layer_output()
    with pytest.raises(ValueError, match="launch failed: out of resources"):
        y.sum().backward()  # the Python exception itself, as through torch's Python nodes

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gpu, "backward", out_of_memory)
    y = _layer_output()[2]
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"):
        y.sum().backward()  # (what batch-size finders catch)


def test_missing_triton_is_an_error_only_when_asked_for(monkeypatch):
    monkeypatch.setattr(gpu, "_load", lambda: (None, gpu.MISSING))
    x = torch.randn(4, 3)
    with pytest.raises(KernelUnavailable, match="Triton is not installed"):
        BF.batch_norm(x, None, None, training=True, kernel="triton")
    y = BF.batch_norm(x.requires_grad_(), None, None, training=True, kernel="auto")
    assert not triton_node(y)


def test_a_broken_triton_is_reported_not_raised_under_auto(monkeypatch):
    reason = "importing Triton failed: ImportError: libcuda.so.1 not found"
    monkeypatch.setattr(gpu, "_load", lambda: (None, reason))
    assert gpu.triton_status() == reason
    with pytest.raises(KernelUnavailable, match="libcuda"):
        BF.batch_norm(torch.randn(4, 3), None, None, training=True, kernel="triton")
    assert not gpu.triton_eligible(torch.randn(4, 3), ())


def test_auto_runs_triton_only_on_gpus():
    x = torch.randn(4, 3, requires_grad=True).half()  # not the fused kernels' dtype either
    y = BF.batch_norm(x, None, None, training=True, kernel="auto")
    assert not triton_node(y)


cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
GPU_SHAPES = [(64, 6, 24, 24), (64, 16, 8, 8), (64, 120), (64, 84), (256, 64, 56, 56),
              (3, 5, 1000), (2, 7)]


@cuda_only
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
def test_cuda_matches_torch(shape, activation, monkeypatch):
    monkeypatch.setenv("BNLAB_KERNEL", "auto")
    assert_steps_match(shape, activation, device="cuda", tol={"rtol": 1e-4, "atol": 1e-4})


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_matches_torch(dtype, monkeypatch):
    monkeypatch.setenv("BNLAB_KERNEL", "auto")
    ours, theirs = pair((32, 8, 10, 10), device="cuda")
    x = torch.randn(32, 8, 10, 10, device="cuda", dtype=dtype)
    with torch.autocast("cuda", enabled=False):
        torch.testing.assert_close(ours(x).float(), theirs(x.float()), rtol=2e-2, atol=2e-2)


@cuda_only
@pytest.mark.parametrize("shape", [(64, 6, 24, 24), (256, 64, 56, 56), (8, 3, 4, 5, 6)])
def test_cuda_channels_last_matches_torch(shape, monkeypatch):
    monkeypatch.setenv("BNLAB_KERNEL", "auto")
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    ours = (bnlab.BatchNorm2d if len(shape) == 4 else bnlab.BatchNorm3d)(shape[1]).cuda()
    theirs = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm3d)(shape[1]).cuda()
    x = torch.randn(shape, device="cuda").contiguous(memory_format=fmt)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    assert triton_node(ya)
    assert ya.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-4)
    dy = torch.randn_like(x)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
