"""Split a nested state dict (an optimizer's or scheduler's ``state_dict()``) into its tensors
and a JSON document for everything else, and join them back exactly.

Tensors are replaced by ``{"__tensor__": key}`` where ``key`` is their dotted path
(``state.0.exp_avg``, ``param_groups.0.lr``). JSON cannot say everything Python can, so a few
values are tagged: tuples ``{"__tuple__": [...]}``, non-finite floats ``{"__float__": "nan"}``,
dicts whose keys are not all strings (the optimizer's ``state`` is keyed by parameter index)
``{"__items__": [[key, value], ...]}``, and the two dict types torch's schedulers use,
``Counter`` (MultiStepLR's milestones) ``{"__counter__": [...]}`` and ``OrderedDict``
``{"__ordered__": [...]}``, items listed likewise; other mapping types are refused. Finite
floats are written with ``repr``, which reads back to the same double, so the round trip is
exact.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["UnsupportedValue", "join_tree", "split_tree"]

_TAGS = ("__tensor__", "__tuple__", "__float__", "__items__", "__counter__", "__ordered__")
_MAPPING_TAGS = {Counter: "__counter__", OrderedDict: "__ordered__"}


class UnsupportedValue(TypeError):
    """A value the codec cannot store; ``path``: where it sits in the tree."""

    def __init__(self, path: str, value: object) -> None:
        super().__init__(f"cannot store a {type(value).__name__} at {path or '<root>'}")
        self.path = path


def split_tree(tree: Any) -> tuple[Any, dict[str, Tensor]]:
    """``(document, tensors)``: ``document`` is JSON-serializable (``allow_nan=False``) and
    ``tensors`` maps each tensor's key to the tensor (not copied). Raises
    :class:`UnsupportedValue` for values other than tensors, None, bool, int, float, str,
    list, tuple, dict, Counter, OrderedDict (and numpy scalars, stored as Python numbers)."""
    tensors: dict[str, Tensor] = {}
    return _encode(tree, "", tensors), tensors


def join_tree(document: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`split_tree`. Raises ``KeyError`` for a missing tensor key and
    ``ValueError`` for a malformed tag."""
    return _decode(document, tensors)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _encode(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        key, n = path or "tensor", 1
        while key in tensors:  # keys with dots in them could collide: keep every key unique
            key, n = f"{path}#{n}", n + 1
        tensors[key] = obj
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic) and isinstance(obj.item(), (bool, int, float)):
        return _encode(obj.item(), path, tensors)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping) and (type(obj) is dict or type(obj) in _MAPPING_TAGS):
        tag = _MAPPING_TAGS.get(type(obj), "__items__")
        tag_like = len(obj) == 1 and next(iter(obj)) in _TAGS
        if tag == "__items__" and not tag_like and all(isinstance(k, str) for k in obj):
            return {k: _encode(v, _join(path, k), tensors) for k, v in obj.items()}
        return {
            tag: [
                [_encode(k, path, tensors), _encode(v, _join(path, k), tensors)]
                for k, v in obj.items()
            ]
        }
    raise UnsupportedValue(path, obj)


def _decode(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((tag, value),) = obj.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in value)
        if tag == "__float__":
            if value not in ("nan", "inf", "-inf"):
                raise ValueError(f"bad float tag {value!r}")
            return float(value)
        if tag in ("__items__", "__counter__", "__ordered__"):
            kind = {"__items__": dict, "__counter__": Counter, "__ordered__": OrderedDict}[tag]
            return kind({_decode(k, tensors): _decode(v, tensors) for k, v in value})
    return {k: _decode(v, tensors) for k, v in obj.items()}
