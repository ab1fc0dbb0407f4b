"""Bad input gets a clear error, as torch's layers give."""

import pytest
import torch

import bnlab
from bnlab import functional as BF


@pytest.mark.parametrize(
    "layer, bad_shape, expected",
    [
        (bnlab.BatchNorm1d(3), (2, 3, 4, 5), "expected 2D \\(N, C\\) or 3D \\(N, C, L\\) input"),
        (bnlab.BatchNorm1d(3), (3,), "got 1D input"),
        (bnlab.BatchNorm2d(3), (2, 3, 4), "expected 4D \\(N, C, H, W\\) input \\(got 3D"),
        (bnlab.BatchNorm3d(3), (2, 3, 4, 4), "expected 5D \\(N, C, D, H, W\\) input"),
        (bnlab.BatchNorm(3, num_dims=4), (2, 3), "expected 4D input \\(got 2D input\\)"),
    ],
)
def test_wrong_rank_names_expected_shape(layer, bad_shape, expected):
    with pytest.raises(ValueError, match=expected):
        layer(torch.randn(bad_shape))


@pytest.mark.parametrize("kwargs", [{}, {"affine": False, "track_running_stats": False}])
def test_channel_mismatch_is_named(kwargs):
    with pytest.raises(ValueError, match="got input with 5 channels .*expected 3 in dim 1"):
        bnlab.BatchNorm2d(3, **kwargs)(torch.randn(2, 5, 4, 4))


def test_functional_channel_mismatch():
    with pytest.raises(ValueError, match="input has 4 channels .* running_mean has 3"):
        BF.batch_norm(torch.randn(2, 4), torch.zeros(3), torch.ones(3), training=True)


@pytest.mark.parametrize("layers, call", [
    ((torch.nn.BatchNorm1d, bnlab.BatchNorm1d), lambda layer, F: layer(3)(torch.randn(4, 5))),
    ((None, None), lambda layer, F: F.batch_norm(torch.randn(4, 3), torch.zeros(3),
                                                 torch.ones(3), torch.ones(4))),
    ((None, None), lambda layer, F: F.batch_norm(torch.randn(4, 3), None, None)),
], ids=["module channels", "weight size", "eval without running stats"])
def test_errors_torch_raises_as_runtime_error_are_runtime_errors_too(layers, call):
    # code written for torch's layers catches RuntimeError; bnlab's own callers ValueError
    with pytest.raises(RuntimeError):
        call(layers[0], torch.nn.functional)
    with pytest.raises(RuntimeError) as caught:
        call(layers[1], BF)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, bnlab.norm.BatchNormArgumentError)


@pytest.mark.parametrize("cls, shape", [(bnlab.BatchNorm1d, (1, 3)),
                                        (bnlab.BatchNorm2d, (1, 3, 1, 1)),
                                        (bnlab.BatchNorm1d, (1, 3, 1))])
def test_one_value_per_channel_in_training_raises(cls, shape):
    layer = cls(3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        layer(torch.randn(shape))
    assert layer.running_mean.abs().sum() == 0  # nothing moved
    layer.eval()
    assert layer(torch.randn(shape)).shape == shape  # fine with running statistics


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4, 4), (2, 3, 0)])
def test_empty_batch_returns_empty_output_and_leaves_statistics(shape):
    layer = bnlab.BatchNorm1d(3) if len(shape) < 4 else bnlab.BatchNorm2d(3)
    torch_layer = (torch.nn.BatchNorm1d(3) if len(shape) < 4 else torch.nn.BatchNorm2d(3))
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    assert y.shape == shape
    y.sum().backward()  # the graph stays connected
    assert x.grad.shape == shape
    assert torch.equal(layer.running_mean, torch.zeros(3))
    assert torch.equal(layer.running_var, torch.ones(3))
    torch_layer(torch.randn(shape))  # counter as torch's (torch counts the call)
    assert layer.num_batches_tracked.item() == torch_layer.num_batches_tracked.item()


def test_notebook_form_rejects_unknown_rank():
    with pytest.raises(ValueError, match="num_dims must be 2, 3, 4 or 5"):
        bnlab.BatchNorm(3, num_dims=6)


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64, torch.bool])
def test_input_must_be_real_floating_point(dtype):
    with pytest.raises(ValueError, match=f"real floating-point input, got {dtype}"):
        bnlab.BatchNorm1d(3)(torch.ones(4, 3).to(dtype))


def test_running_statistics_come_both_or_neither():
    with pytest.raises(ValueError, match="either both be None or neither be None"):
        BF.batch_norm(torch.randn(4, 3), torch.zeros(3), None, training=True)
    with pytest.raises(ValueError, match="either both be None or neither be None"):
        torch.nn.functional.batch_norm(torch.randn(4, 3), torch.zeros(3), None, training=True)


@pytest.mark.parametrize("eps", [0.0, -2.0])
def test_eps_must_be_positive_in_training_as_in_torch(eps):
    with pytest.raises(ValueError, match="eps must be positive during training"):
        bnlab.BatchNorm1d(3, eps=eps)(torch.randn(4, 3))
    with pytest.raises(ValueError, match="eps must be positive during training"):
        torch.nn.BatchNorm1d(3, eps=eps)(torch.randn(4, 3))


def test_eps_must_not_be_negative_in_evaluation_as_in_torch():
    with pytest.raises(ValueError, match="eps must be non-negative"):
        bnlab.BatchNorm1d(3, eps=-1.0).eval()(torch.randn(4, 3))
    with pytest.raises(ValueError, match="eps must be non-negative"):
        torch.nn.BatchNorm1d(3, eps=-1.0).eval()(torch.randn(4, 3))
    bnlab.BatchNorm1d(3, eps=0.0).eval()(torch.randn(4, 3))  # as torch: allowed


def test_pruned_and_parametrized_parameters_are_used():
    from torch.nn.utils import parametrize, prune

    x = torch.randn(4, 3, 2, 2)
    outputs = []
    for layer in (bnlab.BatchNorm2d(3), torch.nn.BatchNorm2d(3)):
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([1.0, -3.0, 2.0]))
        prune.l1_unstructured(layer, "weight", amount=1)  # zeroes the smallest |weight|
        parametrize.register_parametrization(layer, "bias", Doubled())
        with torch.no_grad():
            layer.parametrizations.bias.original.fill_(0.5)
        outputs.append(layer(x))
    torch.testing.assert_close(outputs[0], outputs[1])
    assert torch.all(outputs[0][:, 0] == 1.0)  # weight pruned to 0, bias doubled to 1


class Doubled(torch.nn.Module):
    def forward(self, t):
        return 2 * t


@pytest.mark.parametrize("x_dtype, p_dtype, allowed", [
    (torch.float32, torch.float64, False), (torch.float64, torch.float32, False),
    (torch.float32, torch.float16, False), (torch.float16, torch.bfloat16, False),
    (torch.float16, torch.float32, True), (torch.bfloat16, torch.float32, True),
])
def test_mixed_dtypes_follow_torchs_rule(x_dtype, p_dtype, allowed):
    x = torch.randn(4, 3).to(x_dtype)
    stats = (torch.zeros(3, dtype=p_dtype), torch.ones(3, dtype=p_dtype))
    try:
        torch.nn.functional.batch_norm(x, *stats, training=True)
        torch_allows = True
    except RuntimeError:
        torch_allows = False
    assert torch_allows == allowed
    if allowed:
        BF.batch_norm(x, *stats, training=True)
        return
    with pytest.raises(RuntimeError, match="mixed dtypes"):  # also a ValueError
        BF.batch_norm(x, *stats, training=True)
    layer = bnlab.BatchNorm1d(3).to(p_dtype)
    with pytest.raises(ValueError, match="mixed dtypes"):
        layer(x)
