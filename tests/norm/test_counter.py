"""num_batches_tracked: counted once per training call, on every kernel path (the fused op
increments it itself), as torch's layers count."""

import pytest
import torch

import bnlab
from bnlab import functional as BF


def test_counts_training_calls_like_torch():
    ours, theirs = bnlab.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    for _ in range(3):
        x = torch.randn(4, 3, 5, 5)
        ours(x)
        theirs(x)
    ours.eval(), theirs.eval()
    ours(torch.randn(4, 3, 5, 5))
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 3


def test_cumulative_average_uses_the_new_count():
    ours = bnlab.BatchNorm1d(3, momentum=None)
    theirs = torch.nn.BatchNorm1d(3, momentum=None)
    for _ in range(4):
        x = torch.randn(8, 3) * 2 + 1
        ours(x)
        theirs(x)
    assert ours.num_batches_tracked.item() == 4
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_functional_counter_moves_in_training_only():
    counter = torch.tensor(5)
    BF.batch_norm(torch.randn(4, 3), None, None, training=True, num_batches_tracked=counter)
    assert counter.item() == 6
    BF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=False,
                  num_batches_tracked=counter)
    assert counter.item() == 6


def test_counted_under_inference_mode():
    layer = bnlab.BatchNorm1d(3)
    with torch.inference_mode():
        layer(torch.randn(4, 3))
    assert layer.num_batches_tracked.item() == 1


def test_rejected_arguments_leave_the_counter():
    layer = bnlab.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 3))
    assert layer.num_batches_tracked.item() == 0


def test_fused_op_checks_the_counter(kernel):
    if kernel != "fused":
        pytest.skip("the fused op's own check")
    with pytest.raises(RuntimeError, match="num_batches_tracked must be a one-element int64"):
        BF.batch_norm(torch.randn(4, 3), None, None, training=True,
                      num_batches_tracked=torch.zeros(1))


def test_the_fused_op_counts_only_a_batch_it_accepts(kernel):
    if kernel != "fused":
        pytest.skip("the fused op's own check")
    counter = torch.tensor(0)
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        torch.ops.bnlab.batch_norm(torch.randn(1, 3), None, None, None, None, True, 0.1, 1e-5,
                                   0, counter)
    assert counter.item() == 0
    torch.ops.bnlab.batch_norm(torch.randn(2, 3), None, None, None, None, True, 0.1, 1e-5, 0,
                               counter)
    assert counter.item() == 1


@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_rejected_batch_is_not_counted_in_either_momentum_mode(momentum):
    layer = bnlab.BatchNorm1d(3, momentum=momentum)
    reference = torch.nn.BatchNorm1d(3, momentum=momentum)
    x = torch.randn(8, 3)
    layer(x), reference(x)
    with pytest.raises(ValueError):
        layer(torch.randn(1, 3))  # one value per channel
    assert layer.num_batches_tracked.item() == 1  # (torch's layer would count it)
    x = torch.randn(8, 3) * 3 + 1
    layer(x), reference(x)
    assert layer.num_batches_tracked.item() == 2
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    torch.testing.assert_close(layer.running_var, reference.running_var)
