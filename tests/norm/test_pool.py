"""A 2x2 average pooling ending the layer (``pool=2``): equal to torch's batch norm, then the
activation, then ``F.avg_pool2d(., 2)``, on every kernel path; on the fused kernels the
pooling happens in the same pass (and equals pooling bnlab's own unpooled output exactly)."""

import pytest
import torch
import torch.nn.functional as F

import bnlab
from bnlab import functional as BF
from bnlab.norm import convert, convert_sync_batchnorm

ACTS = {None: lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=dtype) * 3 + 1).requires_grad_()
    w = (torch.rand(c, generator=g, dtype=dtype) + 0.5).requires_grad_()
    b = torch.randn(c, generator=g, dtype=dtype).requires_grad_()
    return x, w, b


def _small(kernel, shape):
    # Triton's CPU interpreter is slow: a smaller batch there, same code paths.
    return (4, *shape[1:]) if kernel == "triton" else shape


@pytest.mark.parametrize("shape", [(64, 6, 24, 24), (64, 16, 8, 8), (3, 2, 6, 4)])
@pytest.mark.parametrize("act", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_matches_torch_batch_norm_activation_then_pooling(kernel, shape, act, training, dtype,
                                                          tol, planar_split):
    shape = _small(kernel, shape)
    x, w, b = _inputs(shape, dtype)
    c = shape[1]
    stats = [torch.rand(c, dtype=dtype) + 0.5 for _ in range(2)]
    ours_rm, ours_rv = stats[0].clone(), stats[1].clone()
    ref_rm, ref_rv = stats[0].clone(), stats[1].clone()
    y = BF.batch_norm(x, ours_rm, ours_rv, w, b, training, 0.1, 1e-5, activation=act, pool=2)
    ref = F.avg_pool2d(ACTS[act](F.batch_norm(x, ref_rm, ref_rv, w, b, training, 0.1, 1e-5)), 2)
    assert y.shape == (shape[0], c, shape[2] // 2, shape[3] // 2)
    torch.testing.assert_close(y, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(ours_rm, ref_rm, rtol=tol, atol=tol)
    torch.testing.assert_close(ours_rv, ref_rv, rtol=tol, atol=tol)
    g = torch.randn_like(ref)
    # float32 parameter gradients sum a few dozen products that partly cancel: 10x looser
    gtol = tol if dtype == torch.float64 else 10 * tol
    for a, e in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        scale = e.abs().max()
        torch.testing.assert_close(a / scale, e / scale, rtol=gtol, atol=gtol)


@pytest.mark.parametrize("act", [None, "sigmoid"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_pooling_the_unpooled_output_exactly(kernel, act, training, dtype, planar_split):
    # The same activated values, summed in avg_pool2d's order: bit-identical, and the same
    # gradients (the pooled gradient spread is exact: a division by 4).
    x, w, b = _inputs(_small(kernel, (16, 6, 12, 8)), dtype, seed=1)
    rm, rv = torch.rand(6, dtype=dtype) + 0.5, torch.rand(6, dtype=dtype) + 0.5
    pooled = BF.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5,
                           activation=act, pool=2)
    unpooled = F.avg_pool2d(BF.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5,
                                          activation=act), 2)
    tol = 0 if kernel == "fused" else (1e-6 if dtype == torch.float32 else 1e-12)
    torch.testing.assert_close(pooled, unpooled, rtol=tol, atol=tol)
    g = torch.randn_like(pooled)
    for a, e in zip(torch.autograd.grad(pooled, (x, w, b), g),
                    torch.autograd.grad(unpooled, (x, w, b), g)):
        torch.testing.assert_close(a, e, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                   atol=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("act", [None, "sigmoid"])
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_finite_differences(kernel, act, training):
    x = (torch.randn(3, 2, 4, 6, dtype=torch.float64) + 0.3).requires_grad_()
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
        return BF.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, activation=act, pool=2)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("layout", ["odd", "channels_last", "strided"])
def test_inputs_the_fused_pass_cannot_pool_are_pooled_after_it(kernel, layout):
    # Odd H or W (the last row/column dropped, as avg_pool2d does), channels-last and
    # non-contiguous input: pooled as a separate op, same result.
    x, w, b = _inputs((4, 3, 7, 6), torch.float64)
    if layout == "channels_last":
        x = x.detach()[:, :, :6].contiguous(memory_format=torch.channels_last).requires_grad_()
    elif layout == "strided":
        x = x.detach()[:, :, :, :4].requires_grad_()  # sliced: (4, 3, 7, 4), not contiguous
    y = BF.batch_norm(x, None, None, w, b, True, 0.1, 1e-5, activation="sigmoid", pool=2)
    ref = F.avg_pool2d(torch.sigmoid(F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)), 2)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    for a, e in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_bad_pool_values_and_ranks_are_refused():
    x = torch.randn(4, 3, 6, 6)
    with pytest.raises(ValueError, match="pool must be None or 2"):
        BF.batch_norm(x, None, None, training=True, pool=3)
    with pytest.raises(ValueError, match="pool=2 needs 4D"):
        BF.batch_norm(torch.randn(4, 3, 6), None, None, training=True, pool=2)
    with pytest.raises(ValueError, match="pool must be None or 2"):
        bnlab.BatchNorm2d(3, pool=4)
    with pytest.raises(ValueError, match=r"H and W of at least 2.*\(4, 3, 1, 5\)"):
        bnlab.BatchNorm2d(3, pool=2)(torch.randn(4, 3, 1, 5))


def test_module_setting_repr_state_dict_and_shapes():
    layer = bnlab.BatchNorm2d(6, activation="sigmoid", pool=2)
    assert "activation=sigmoid, pool=2" in repr(layer)
    assert layer.state_dict().keys() == torch.nn.BatchNorm2d(6).state_dict().keys()
    assert layer(torch.randn(8, 6, 24, 24)).shape == (8, 6, 12, 12)
    layer.eval()
    assert layer(torch.randn(2, 6, 8, 10)).shape == (2, 6, 4, 5)
    assert bnlab.BatchNorm2d(6).pool is None


def test_fused_layer_keeps_only_the_input_for_backward(kernel):
    if kernel != "fused":
        pytest.skip("what the fused op saves")
    x = torch.randn(8, 4, 12, 12, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        bnlab.BatchNorm2d(4, activation="sigmoid", pool=2)(x)
    big = [t for t in saved if t.numel() > 4]
    assert len(big) == 1 and big[0].shape == x.shape


def test_conversions_keep_or_refuse_the_pooling():
    layer = bnlab.BatchNorm2d(6, activation="sigmoid", pool=2)
    with pytest.raises(ValueError, match="pool=2.*nn.AvgPool2d"):
        convert(torch.nn.Sequential(bnlab.BatchNorm2d(6, pool=2)), to="torch")
    synced = convert_sync_batchnorm(torch.nn.Sequential(layer))[0]
    assert synced.pool == 2 and synced.activation == "sigmoid"
    x = torch.randn(4, 6, 8, 8)
    torch.testing.assert_close(synced(x), layer(x))  # no process group: the local path


def test_raw_op_checks_the_pooled_shapes():
    from bnlab.norm.kernels import cpu_ops

    if cpu_ops() is None:
        pytest.skip("the fused kernels are not built")
    x, w, b = torch.randn(4, 3, 7, 6), torch.ones(3), torch.zeros(3)
    with pytest.raises(RuntimeError, match="pool=2 needs contiguous"):
        torch.ops.bnlab.forward_train(x, w, b, None, None, 0.1, 1e-5, 2, 2)
    x = torch.randn(4, 3, 6, 6)
    _, mean, invstd = torch.ops.bnlab.forward_train(x, w, b, None, None, 0.1, 1e-5, 2, 2)
    with pytest.raises(RuntimeError, match="grad_out has shape"):
        torch.ops.bnlab.backward_act(torch.randn_like(x), x, mean, invstd, w, b, 2, True, True,
                                     True, True, 2)
