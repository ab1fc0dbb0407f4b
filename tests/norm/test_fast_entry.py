"""The fused op's fast Python entry (fast_entry.cpp): the same op, reached unboxed."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bnlab.norm import kernels
from bnlab.norm.kernels import build, loader


@pytest.fixture
def entry(kernel):
    if kernel != "fused":
        pytest.skip("the fast entry is the fused path's: these run once, under it")
    module, reason = loader._load_fast_entry()
    if module is None:
        pytest.skip(f"no fast entry here: {reason}")
    return module.batch_norm


def _args(x, training=True, pool=1):
    c = x.shape[1]
    return (x, torch.rand(c) + 0.5, torch.randn(c), torch.zeros(c), torch.ones(c), training,
            0.1, 1e-5, 2, torch.tensor(0), pool)


def test_the_fused_path_uses_it(entry):
    assert kernels.batch_norm_op() is entry
    assert "fast entry: loaded " in kernels.kernel_status()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("pool", [1, 2])
def test_same_results_as_the_op_called_boxed(entry, training, pool):
    x = torch.randn(8, 5, 4, 6)
    a = _args(x.clone().requires_grad_(), training, pool)
    b = _args(x.clone().requires_grad_(), training, pool)
    b = (b[0], a[1].clone(), a[2].clone(), a[3].clone(), a[4].clone(), *b[5:])
    ya = entry(*a)
    yb = torch.ops.bnlab.batch_norm.default(*b)
    assert torch.equal(ya, yb)
    assert "BnlabBatchNormBackward" in ya.grad_fn.name()
    dy = torch.randn_like(ya)
    ya.backward(dy)
    yb.backward(dy)
    assert torch.equal(a[0].grad, b[0].grad)
    assert torch.equal(a[3], b[3]) and torch.equal(a[4], b[4])  # running statistics
    assert int(a[9]) == int(b[9]) == (1 if training else 0)  # the batch counter


def test_still_a_dispatcher_call(entry):
    def seen_by_a_mode(call):
        seen = []

        class Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                seen.append(str(func))
                return func(*args, **(kwargs or {}))

        args = _args(torch.randn(6, 4))
        with Record():
            call(*args)
        return seen

    # What a Python dispatch mode sees is what it sees of the op called boxed.
    assert seen_by_a_mode(entry) == seen_by_a_mode(torch.ops.bnlab.batch_norm.default)
    with torch.profiler.profile() as prof:
        entry(*_args(torch.randn(6, 4)))
    assert "bnlab::batch_norm" in {e.key for e in prof.key_averages()}
    with torch.inference_mode():
        y = entry(*_args(torch.randn(6, 4)))
    assert y.is_inference()


def test_without_python_headers_the_op_is_called_boxed(kernel, tmp_path, monkeypatch):
    if kernel != "fused" or kernels.cpu_ops() is None:
        pytest.skip("needs the fused kernels; runs once, under the fused parametrisation")
    monkeypatch.setattr(build.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    loader._load_fast_entry.cache_clear()
    loader.batch_norm_op.cache_clear()
    try:
        assert kernels.batch_norm_op() == torch.ops.bnlab.batch_norm.default
        assert "Python's headers (Python.h) are not installed" in kernels.kernel_status()
    finally:
        loader._load_fast_entry.cache_clear()
        loader.batch_norm_op.cache_clear()


def test_cache_key_includes_the_python_abi(monkeypatch):
    plain = build.library_path(loader.FAST_ENTRY)
    here = build.library_path(loader.FAST_ENTRY, python=True)
    assert here != plain
    real = build.sysconfig.get_config_var
    monkeypatch.setattr(build.sysconfig, "get_config_var",
                        lambda name: ".cpython-399-x.so" if name == "EXT_SUFFIX" else real(name))
    assert build.library_path(loader.FAST_ENTRY, python=True) != here
