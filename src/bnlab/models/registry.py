"""Models by name: ``build_model("lenet", norm="torch")``.

Each entry maps a name to a builder ``(norm: str) -> nn.Module``; add a model by adding
an entry to ``MODELS`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import nn

from .lenet import lenet, lenet_relu

__all__ = ["MODELS", "available_models", "build_model", "count_parameters"]

MODELS: Mapping[str, Callable[[str], nn.Module]] = MappingProxyType(
    {
        "lenet": lenet,
        "lenet-relu": lenet_relu,
    }
)


def available_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(MODELS)


def build_model(name: str, norm: str = "bnlab") -> nn.Module:
    """A freshly initialised model ``name`` with batch norm ``norm`` (bnlab|torch|none).

    Raises ValueError naming the known models (or norms) for an unknown one.
    """
    builder = MODELS.get(name) if isinstance(name, str) else None
    if builder is None:
        raise ValueError(
            f"unknown model {name!r}; available models: {', '.join(available_models())}"
        )
    return builder(norm)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (buffers such as running statistics excluded).

    ``trainable_only`` counts only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
