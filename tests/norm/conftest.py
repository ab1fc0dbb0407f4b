"""Every norm test runs once per kernel path: the tensor-op reference, the fused C++, and
the Triton kernels (in Triton's CPU interpreter where there is no GPU)."""

import importlib.metadata
import importlib.util
import os
import shutil

import pytest
import torch

from bnlab.norm.kernels import cpu_ops, kernel_status


def _minor(name: str) -> tuple[int, int]:
    return tuple(int(p) for p in importlib.metadata.version(name).split(".")[:2])


HAVE_TRITON = importlib.util.find_spec("triton") is not None
NO_TRITON = "Triton is not installed (the test extra installs it on Linux x86-64)"
if HAVE_TRITON and not torch.cuda.is_available():
    if _minor("triton") < (3, 9) and _minor("numpy") >= (2, 4):
        HAVE_TRITON = False  # its interpreter converts size-1 arrays with int(), now an error
        NO_TRITON = "Triton < 3.9's interpreter fails with numpy >= 2.4; install triton>=3.9"
    else:
        # Read when the kernels are defined (on first use), so set before any test runs.
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, params=["reference", "fused", "triton"])
def kernel(request, monkeypatch):
    if request.param == "fused" and cpu_ops() is None:
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip(f"no C++ compiler for the fused kernels: {kernel_status()}")
        pytest.fail(f"the fused kernels failed to build: {kernel_status()}")
    if request.param == "triton" and not HAVE_TRITON:
        pytest.skip(NO_TRITON)
    monkeypatch.setenv("BNLAB_KERNEL", request.param)
    return request.param


@pytest.fixture(params=["samples", "channels"])
def planar_split(request, monkeypatch, kernel):
    """How the fused kernels split planar work between threads (forced both ways)."""
    if request.param == "channels" and kernel != "fused":
        pytest.skip("the split is the fused kernels' choice")
    monkeypatch.setenv("BNLAB_PLANAR_SPLIT", request.param)
    return request.param
