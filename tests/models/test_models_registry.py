"""Model registry: names, builders, errors."""

import pytest
from torch import nn

import bnlab
from bnlab.models import MODELS, available_models, build_model, count_parameters


def test_available_models():
    assert available_models() == sorted(MODELS)
    assert {"lenet", "lenet-relu"} <= set(available_models())


@pytest.mark.parametrize("name", ["lenet", "lenet-relu"])
def test_build_model_gives_fresh_models(name):
    a, b = build_model(name, "bnlab"), build_model(name, "bnlab")
    assert isinstance(a, nn.Module) and a is not b
    assert a[0].weight.data_ptr() != b[0].weight.data_ptr()
    assert any(isinstance(m, bnlab.BatchNorm2d) for m in a)
    assert count_parameters(build_model(name, "none")) == 44426


def test_default_norm_is_bnlab():
    assert any(isinstance(m, bnlab.BatchNorm1d) for m in build_model("lenet"))


@pytest.mark.parametrize("name", ["resnet", ["lenet"], None])
def test_unknown_model_lists_known_ones(name):
    with pytest.raises(ValueError) as info:  # (a list was a TypeError: unhashable)
        build_model(name, "torch")
    for known in available_models():
        assert known in str(info.value)


def test_unknown_norm_through_registry():
    with pytest.raises(ValueError, match="unknown norm"):
        build_model("lenet", "layer")


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        MODELS["x"] = build_model  # type: ignore[index]
