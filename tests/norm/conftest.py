"""Every norm test runs once per kernel path: the tensor-op reference and the fused C++."""

import os
import shutil

import pytest

from bnlab.norm.kernels import cpu_ops, kernel_status


@pytest.fixture(autouse=True, params=["reference", "fused"])
def kernel(request, monkeypatch):
    if request.param == "fused" and cpu_ops() is None:
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip(f"no C++ compiler for the fused kernels: {kernel_status()}")
        pytest.fail(f"the fused kernels failed to build: {kernel_status()}")
    monkeypatch.setenv("BNLAB_KERNEL", request.param)
    return request.param
