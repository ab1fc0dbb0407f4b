"""select_device: auto order cuda -> mps -> cpu, and clear errors for bad or missing devices."""

import pytest
import torch

from bnlab.device import select_device


def fake_accelerators(monkeypatch, cuda=0, mps=False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    "cuda, mps, expected",
    [(0, False, "cpu"), (0, True, "mps"), (1, True, "cuda"), (2, False, "cuda")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    fake_accelerators(monkeypatch, cuda, mps)
    assert select_device() == torch.device(expected)
    assert select_device("auto") == torch.device(expected)


@pytest.mark.parametrize("name", ["cpu", " CPU ", torch.device("cpu")])
def test_cpu_is_always_available(monkeypatch, name):
    fake_accelerators(monkeypatch)
    assert select_device(name) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x", "auto:0", "", "cuda:-1", "cpu0"])
def test_unknown_names_raise(name):
    with pytest.raises(ValueError, match="unknown device"):
        select_device(name)


def test_unavailable_accelerators_raise(monkeypatch):
    fake_accelerators(monkeypatch)
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        select_device("mps")


def test_cuda_index_is_checked_against_device_count(monkeypatch):
    fake_accelerators(monkeypatch, cuda=2)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    assert select_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        select_device("cuda:2")


def test_explicit_mps_when_available(monkeypatch):
    fake_accelerators(monkeypatch, mps=True)
    assert select_device("mps") == torch.device("mps")
