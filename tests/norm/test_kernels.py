"""Building and loading the fused kernels; the fallback when they cannot be had."""

import pytest
import torch

from bnlab import functional as BF
from bnlab.norm import kernels
from bnlab.norm.kernels import build, loader


def test_library_is_cached_per_source_and_torch_build(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = build.library_path()
    monkeypatch.delenv("BNLAB_KERNEL_CACHE", raising=False)
    assert build.library_path().is_relative_to(tmp_path / "bnlab" / "kernels")
    monkeypatch.setenv("BNLAB_KERNEL_CACHE", str(tmp_path / "k"))
    assert build.library_path().is_relative_to(tmp_path / "k")
    assert torch.__version__ not in str(path)  # hashed, not spelled out


def test_forced_fused_without_a_compiler_names_the_reason(monkeypatch):
    monkeypatch.setattr(loader, "_load", lambda: (None, "RuntimeError: no C++ compiler"))
    with pytest.raises(kernels.KernelUnavailable, match="no C\\+\\+ compiler"):
        BF.batch_norm(torch.randn(4, 3), None, None, training=True, kernel="fused")
    y = BF.batch_norm(torch.randn(4, 3, requires_grad=True), None, None, training=True,
                      kernel="auto")  # auto falls back quietly
    assert type(y.grad_fn).__name__ == "BatchNormFunctionBackward"


def test_status_says_where_it_was_loaded_from():
    if kernels.cpu_ops() is None:
        pytest.skip(f"fused kernels unavailable here: {kernels.kernel_status()}")
    assert kernels.kernel_status().startswith("loaded ")


def test_cache_key_includes_the_cpu(monkeypatch):
    here = build.library_path()
    monkeypatch.setattr(build, "cpu_signature", lambda: "model name: some other CPU")
    assert build.library_path() != here


def test_cache_key_includes_the_headers(tmp_path, monkeypatch):
    src = tmp_path / "k.cpp"
    src.write_text('#include "part.h"\n')
    (tmp_path / "part.h").write_text("// one\n")
    first = build.library_path(src)
    (tmp_path / "part.h").write_text("// two\n")
    assert build.library_path(src) != first
