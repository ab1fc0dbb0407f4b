"""split_tree / join_tree: nested state with tensors survives JSON exactly, types included."""

import json
import math

import numpy as np
import pytest
import torch
from checkpoint_helpers import bitwise_equal

from bnlab.checkpoint.tree import UnsupportedValue, join_tree, split_tree


def through_json(tree):
    document, tensors = split_tree(tree)
    return join_tree(json.loads(json.dumps(document, allow_nan=False)), tensors), tensors


def test_round_trip_keeps_values_and_types():
    t = torch.arange(3.0)
    tree = {
        "state": {0: {"step": 3.0, "exp_avg": t}, 7: {"buf": [t * 2, (1, None)]}},
        "param_groups": [{"lr": 0.1 + 0.2, "betas": (0.9, 0.999), "params": [0, 7], "x": None}],
        "floats": [math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308],
        "flags": (True, False, 0, 1),
        "__tuple__": "a str key that looks like a tag",
        "text": "é",
    }
    got, tensors = through_json(tree)
    assert bitwise_equal(got, tree)
    assert set(tensors) == {"state.0.exp_avg", "state.7.buf.0"}
    nan, _ = through_json({"v": math.nan})
    assert math.isnan(nan["v"])


def test_tag_shaped_dicts_are_escaped():
    tree = {"__tuple__": [1, 2]}
    got, _ = through_json(tree)
    assert got == tree and isinstance(got["__tuple__"], list)


def test_numpy_scalars_become_python_numbers():
    got, _ = through_json({"a": np.float64(0.1), "b": np.int64(3), "c": np.bool_(True)})
    assert got == {"a": 0.1, "b": 3, "c": True}
    assert [type(v) for v in got.values()] == [float, int, bool]


def test_colliding_keys_stay_distinct():
    a, b = torch.zeros(1), torch.ones(1)
    got, tensors = through_json({"x.y": a, "x": {"y": b}})
    assert len(tensors) == 2
    assert torch.equal(got["x.y"], a) and torch.equal(got["x"]["y"], b)


def test_unsupported_value_names_its_path():
    with pytest.raises(UnsupportedValue, match=r"cannot store a object at groups.1.fn"):
        split_tree({"groups": [{}, {"fn": object()}]})
