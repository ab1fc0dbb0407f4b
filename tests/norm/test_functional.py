"""bnlab.functional against torch.nn.functional.batch_norm and a float64 naive formula."""

import pytest
import torch
import torch.nn.functional as F

from bnlab import functional as BF


def naive_batch_norm(x, weight, bias, eps):
    """The textbook formula in float64, written independently of bnlab."""
    x = x.double()
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    return y * weight.double().reshape(shape) + bias.double().reshape(shape)


@pytest.mark.parametrize("shape", [(6, 3), (6, 3, 5), (4, 3, 5, 6), (3, 3, 2, 4, 5)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("with_stats", [True, False])
@pytest.mark.parametrize("momentum", [0.1, 0.7])
def test_matches_torch_functional(shape, training, with_stats, momentum):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4 - 3
    w = torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    stats = [torch.randn(shape[1], dtype=torch.float64, generator=gen),
             torch.rand(shape[1], dtype=torch.float64, generator=gen) + 0.5]
    ours_stats = [s.clone() for s in stats] if with_stats else [None, None]
    if not training and not with_stats:
        with pytest.raises(ValueError, match="running_mean and running_var must be given"):
            BF.batch_norm(x, *ours_stats, w, b, training, momentum)
        return
    theirs_stats = [s.clone() for s in stats] if with_stats else [None, None]
    ours = BF.batch_norm(x, *ours_stats, w, b, training, momentum, 1e-3)
    theirs = F.batch_norm(x, *theirs_stats, w, b, training, momentum, 1e-3)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    if with_stats:
        for a, t in zip(ours_stats, theirs_stats):
            torch.testing.assert_close(a, t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(16, 5), (8, 5, 7), (4, 5, 6, 6)])
def test_training_forward_matches_naive_float64(shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen) * 2 + 1
    w, b = torch.rand(shape[1], generator=gen), torch.randn(shape[1], generator=gen)
    y = BF.batch_norm(x, None, None, w, b, training=True)
    torch.testing.assert_close(y.double(), naive_batch_norm(x, w, b, 1e-5), rtol=1e-5, atol=1e-5)


def test_batch_stats_and_normalize_compose_to_batch_norm():
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    mean, var = BF.batch_stats(x)
    torch.testing.assert_close(mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(var, x.var(dim=(0, 2, 3), unbiased=False))
    y = BF.normalize(x, mean, var, eps=1e-5, batch_statistics=True)
    torch.testing.assert_close(y, BF.batch_norm(x, None, None, training=True))


def test_update_running_stats_uses_unbiased_variance():
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    mean, var = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([3.0, 6.0],
                                                                           dtype=torch.float64)
    BF.update_running_stats(rm, rv, mean, var, count=4, momentum=0.5)
    torch.testing.assert_close(rm, torch.tensor([0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(rv, torch.tensor([0.5 + 2.0, 0.5 + 4.0], dtype=torch.float64))


def test_update_running_stats_of_the_mean_alone_takes_any_count():
    # (no unbiased variance to form, so one value per channel is fine)
    rm = torch.zeros(2, dtype=torch.float64)
    mean = torch.tensor([1.0, 2.0], dtype=torch.float64)
    BF.update_running_stats(rm, None, mean, torch.zeros(2, dtype=torch.float64), count=1,
                            momentum=0.5)
    torch.testing.assert_close(rm, torch.tensor([0.5, 1.0], dtype=torch.float64))


def test_never_calls_torch_batch_norm(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch's batch norm was called")

    for owner, name in [(torch, "batch_norm"), (torch, "native_batch_norm"),
                        (F, "batch_norm")]:
        monkeypatch.setattr(owner, name, forbidden)
    x = torch.randn(4, 3, 5, requires_grad=True)
    BF.batch_norm(x, torch.zeros(3), torch.ones(3), training=True).sum().backward()
    BF.batch_norm(x, torch.zeros(3), torch.ones(3), training=False).sum().backward()


def test_kernel_choice_is_honoured(kernel):
    x = torch.randn(8, 3, 4, requires_grad=True)
    y = BF.batch_norm(x, torch.zeros(3), torch.ones(3), training=True)
    # (the Triton path's node, or its autograd Function where the node is not built)
    triton = ("BnlabTritonBatchNormBackward", "TritonBatchNormFunctionBackward")
    expected = {"fused": ("BnlabBatchNormBackward",), "triton": triton}.get(
        kernel, ("BatchNormFunction",))
    assert y.grad_fn.name().startswith(expected)
    half = BF.batch_norm(x.half(), None, None, training=True)  # fused: float32/64 only
    expected = triton if kernel == "triton" else ("BatchNormFunction",)
    assert half.grad_fn.name().startswith(expected)


def test_unknown_kernel_is_named():
    with pytest.raises(ValueError, match="kernel must be one of auto, fused, triton, reference"):
        BF.batch_norm(torch.randn(4, 3), None, None, training=True, kernel="cuda")
