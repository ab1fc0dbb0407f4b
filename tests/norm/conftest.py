"""Every norm test runs once per kernel path: the tensor-op reference and the fused C++."""

import pytest


@pytest.fixture(autouse=True, params=["reference", "fused"])
def kernel(request, monkeypatch):
    monkeypatch.setenv("BNLAB_KERNEL", request.param)
    return request.param
