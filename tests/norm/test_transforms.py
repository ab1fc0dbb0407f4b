"""Forward-mode AD and torch.func transforms give torch's derivatives, on every kernel path
(the kernels have no forward-mode or vmap rules: under a transform the tensor-op path runs),
and torch.fx traces the layers as the leaf modules torch's are."""

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jvp, vmap

import bnlab


def pair(training: bool, activation=None, **kwargs):
    """The same settings and random parameters/statistics in bnlab's and torch's layer."""
    torch.manual_seed(0)
    ours, theirs = bnlab.BatchNorm2d(3, **kwargs), torch.nn.BatchNorm2d(3, **kwargs)
    if theirs.affine:
        theirs.weight.data.uniform_(0.5, 2)
        theirs.bias.data.normal_()
    if theirs.track_running_stats:
        theirs.running_mean.normal_()
        theirs.running_var.uniform_(0.5, 2)
    ours.load_state_dict(theirs.state_dict())
    ours.train(training), theirs.train(training)
    return ours, theirs


@pytest.mark.parametrize("training", [True, False])
def test_forward_mode_tangent_equals_torchs(training):
    ours, theirs = pair(training)
    x, tangent = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    outs = []
    for layer in (ours, theirs):
        with fwAD.dual_level():
            y = layer(fwAD.make_dual(x, tangent))
            outs.append(fwAD.unpack_dual(y))
    (y_ours, t_ours), (y_theirs, t_theirs) = outs
    assert t_ours is not None
    torch.testing.assert_close(y_ours, y_theirs)
    torch.testing.assert_close(t_ours, t_theirs)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)  # buffers: plain values
    assert fwAD.unpack_dual(ours.running_mean).tangent is None


def test_forward_mode_through_weight_and_bias():
    # (with running statistics torch's layer, too, mutates captured buffers: refused by jvp)
    ours, theirs = pair(True, track_running_stats=False)
    x = torch.randn(4, 3, 2, 2)
    dw, db = torch.randn(3), torch.randn(3)
    tangents = []
    for layer in (ours, theirs):
        params = {"weight": layer.weight.detach(), "bias": layer.bias.detach()}
        _, t = jvp(lambda w, b, layer=layer: functional_call(layer, {"weight": w, "bias": b},
                                                             (x,)),
                   (params["weight"], params["bias"]), (dw, db))
        tangents.append(t)
    torch.testing.assert_close(tangents[0], tangents[1])


def test_torch_func_grad_and_vmap_in_eval():
    ours, theirs = pair(False)
    x = torch.randn(4, 3, 2, 2)
    results = []
    for layer in (ours, theirs):
        g = grad(lambda inp, layer=layer: layer(inp).pow(2).sum())(x)
        per_sample = vmap(lambda inp, layer=layer: layer(inp.unsqueeze(0)).squeeze(0))(x)
        results.append((g, per_sample))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_torch_func_grad_in_training_without_running_stats():
    ours, theirs = pair(True, track_running_stats=False)
    x = torch.randn(4, 3, 2, 2)
    g = [grad(lambda inp, layer=layer: layer(inp).pow(3).sum())(x) for layer in (ours, theirs)]
    torch.testing.assert_close(g[0], g[1])


def test_vmap_in_training_with_unbatched_running_stats_is_refused_before_any_update():
    ours, theirs = pair(True)
    x = torch.randn(2, 4, 3, 5, 5)  # vmapped over dim 0: two (4, 3, 5, 5) batches
    before = copy.deepcopy(ours.state_dict())
    for layer in (ours, theirs):
        with pytest.raises(RuntimeError, match="batched"):
            vmap(layer)(x)
    for key in ("running_mean", "running_var"):
        torch.testing.assert_close(ours.state_dict()[key], before[key], rtol=0, atol=0)
        torch.testing.assert_close(ours.state_dict()[key], theirs.state_dict()[key])


def test_vmap_in_training_with_batched_running_stats_updates_each_like_torch():
    ours, theirs = pair(True)
    x = torch.randn(2, 4, 3, 5, 5)
    results = []
    for layer in (ours, theirs):
        stats = {name: getattr(layer, name).expand(2, 3).clone()
                 for name in ("running_mean", "running_var")}
        out = vmap(lambda inp, buffers, layer=layer: functional_call(layer, buffers, (inp,)))(
            x, stats)
        results.append((out, stats))
    torch.testing.assert_close(results[0][0], results[1][0])
    for key in ("running_mean", "running_var"):
        torch.testing.assert_close(results[0][1][key], results[1][1][key])
    assert not torch.equal(results[0][1]["running_mean"][0], results[0][1]["running_mean"][1])


def test_an_eval_output_can_be_differentiated_after_a_training_step():
    layer = bnlab.BatchNorm2d(3).eval()
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    y = layer(x)
    layer.train()
    layer(torch.randn(4, 3, 2, 2) * 5 + 3)  # moves the running statistics in place
    y.sum().backward()  # with the statistics the output was computed from
    expected = torch.rsqrt(torch.ones(3) + layer.eps).view(1, 3, 1, 1).expand_as(x)
    torch.testing.assert_close(x.grad, expected)


def test_fx_symbolic_trace_keeps_each_layer_as_one_call_like_torchs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), bnlab.BatchNorm2d(3, activation="relu"),
        torch.nn.Flatten(), torch.nn.Linear(12, 4), bnlab.BatchNorm1d(4),
        bnlab.SyncBatchNorm(4))
    untraced = copy.deepcopy(model)
    traced = torch.fx.symbolic_trace(model)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert calls == ["0", "1", "2", "3", "4", "5"]  # the BN layers are leaves, as torch's
    x = torch.randn(5, 1, 4, 4)
    torch.testing.assert_close(traced(x), untraced(x))  # training: batch statistics...
    torch.testing.assert_close(traced.get_submodule("1").running_mean, untraced[1].running_mean)
    traced.eval(), untraced.eval()
    torch.testing.assert_close(traced(x), untraced(x))  # ...and the mode is the call's


def test_jit_trace_records_the_tensor_ops_not_bnlabs_library():
    layer = bnlab.BatchNorm2d(3, activation="relu").eval()
    x = torch.randn(4, 3, 5, 5)
    traced = torch.jit.trace(layer, x)
    assert "bnlab::" not in str(traced.inlined_graph)  # runs where bnlab's library is not
    torch.testing.assert_close(traced(x), layer(x))


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("training", [True, False])
def test_batched_gradients_equal_torchs(activation, training, kernel):
    # autograd.grad(is_grads_batched=True) (as jacobian(..., vectorize=True) uses) hands the
    # backward batched gradients, wrappers the kernels cannot read: they take tensor ops.
    ours, theirs = pair(training)
    ours.activation = activation  # (a setting, not state)
    act = {None: lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}[activation]
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    seeds = torch.randn(2, 4, 3, 5, 5)
    y = ours(x)
    # the kernels' own node (or the Triton path's Function where its node is not built)
    assert kernel == "reference" or y.grad_fn.name().startswith(("Bnlab", "TritonBatchNorm"))
    got = torch.autograd.grad(y, (x, ours.weight, ours.bias), seeds, is_grads_batched=True)
    want = torch.autograd.grad(act(theirs(x)), (x, theirs.weight, theirs.bias), seeds,
                               is_grads_batched=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
