"""The hand-written backward: finite differences (gradcheck) and double backward."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from bnlab import functional as BF


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 5), (3, 2, 3, 4), (2, 2, 2, 3, 2)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_and_gradgradcheck(shape, training, affine):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).requires_grad_()
    c = shape[1]
    rm = torch.randn(c, generator=gen, dtype=torch.float64)
    rv = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    inputs = [x]
    if affine:
        inputs += [(torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(),
                   torch.randn(c, generator=gen, dtype=torch.float64).requires_grad_()]

    def fn(x, *wb):
        # Fresh copies: the running statistics must not drift between gradcheck's calls.
        return BF.batch_norm(x, rm.clone(), rv.clone(), *wb, training=training, eps=1e-3)

    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


def test_closed_form_matches_autograd_of_the_naive_formula():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad(BF.batch_norm(x, None, None, w, b, training=True), (x, w, b), dy)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    y = (x - mean) / torch.sqrt(var + 1e-5) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    ref = torch.autograd.grad(y, (x, w, b), dy)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_only_input_and_two_statistics_are_saved(kernel):
    # Seen through saved-tensor hooks, which every path's node honours (the C++ nodes keep
    # their (C,) statistics outside autograd, so those may not show).
    packed = []
    x = torch.randn(8, 3, 4, 4, requires_grad=True)
    w = torch.ones(3, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = BF.batch_norm(x, None, None, w, torch.zeros(3, requires_grad=True), training=True)
    assert y.grad_fn is not None
    # (The reference path's statistics op saves x too: the same tensor, no more memory.)
    big = [t for t in packed if t.numel() > 2 * 3]  # the statistics: (C,) each, or (2, C)
    assert big and {t.data_ptr() for t in big} == {x.data_ptr()}
