"""LeNet-5 with batch normalization, exactly as the notebook builds it.

Layout (input (N, 1, 28, 28), output logits (N, 10)); ``BN`` marks the layers that
``norm="none"`` leaves out::

    Conv2d(1, 6, 5)  BN(6)   act  pool(2, 2)
    Conv2d(6, 16, 5) BN(16)  act  pool(2, 2)  Flatten
    Linear(256, 120) BN(120) act
    Linear(120, 84)  BN(84)  act
    Linear(84, 10)

The model is a flat ``nn.Sequential``, so with batch norm its ``state_dict`` keys
(``"0.weight"``, ``"1.running_mean"``, ...) are those of the notebook's ``concise_net``
(``nn.BatchNorm2d``/``nn.BatchNorm1d``; its hand-written ``net`` stores only ``gamma``
and ``beta``, shaped (1, C[, 1, 1]), its moving statistics being plain attributes), and
``norm="bnlab"`` and
``norm="torch"`` state dicts load into each other.

With ``norm="bnlab"`` each BN layer applies the activation itself, fused into its kernel
(``BatchNorm1d(120, activation="sigmoid")``; its backward recomputes the activation instead
of keeping its output), and an ``nn.Identity`` stands where the activation module was, so
the indices, and the state_dict keys, stay the notebook's. In ``lenet`` the convolutional
BN layers also do the 2x2 average pooling (``BatchNorm2d(6, activation="sigmoid",
pool=2)``: the full-size activation is never written) and a second ``nn.Identity`` stands
where the pooling was.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..norm import BatchNorm1d, BatchNorm2d
from .layers import AvgPool2d, Conv2d

__all__ = ["NORMS", "lenet", "lenet_relu"]

NORMS = ("bnlab", "torch", "none")

_BN_CLASSES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "bnlab": (BatchNorm2d, BatchNorm1d),
    "torch": (nn.BatchNorm2d, nn.BatchNorm1d),
}


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def _build(norm: str, activation: str, pool: Callable[[], nn.Module]) -> nn.Sequential:
    _check_norm(norm)
    bn2d, bn1d = _BN_CLASSES.get(norm, (None, None))

    def block(layer: nn.Module, channels: int, bn: type[nn.Module] | None) -> list[nn.Module]:
        if bn is None:
            return [layer, _ACTIVATIONS[activation]()]
        if norm == "bnlab":
            return [layer, bn(channels, activation=activation), nn.Identity()]
        return [layer, bn(channels), _ACTIVATIONS[activation]()]

    def pooled_block(layer: nn.Module, channels: int) -> list[nn.Module]:
        if norm == "bnlab" and pool is AvgPool2d:  # the BN layer pools too
            bn = bn2d(channels, activation=activation, pool=2)
            return [layer, bn, nn.Identity(), nn.Identity()]
        return [*block(layer, channels, bn2d), pool()]

    return nn.Sequential(
        *pooled_block(Conv2d(1, 6, kernel_size=5), 6),
        *pooled_block(nn.Conv2d(6, 16, kernel_size=5), 16),
        nn.Flatten(),
        *block(nn.Linear(16 * 4 * 4, 120), 120, bn1d),
        *block(nn.Linear(120, 84), 84, bn1d),
        nn.Linear(84, 10),
    )


def lenet(norm: str = "bnlab") -> nn.Sequential:
    """The notebook's LeNet: sigmoid activations, 2x2 average pooling (the first
    convolution and the pooling on bnlab's kernels, :mod:`bnlab.models.layers`, for every
    ``norm``).

    ``norm``: ``"bnlab"`` (bnlab.BatchNorm2d/1d), ``"torch"`` (nn.BatchNorm2d/1d) or
    ``"none"`` (no batch-norm layers). Input (N, 1, 28, 28) -> logits (N, 10).
    """
    return _build(norm, "sigmoid", AvgPool2d)


def lenet_relu(norm: str = "bnlab") -> nn.Sequential:
    """The same LeNet with ReLU activations and 2x2 max pooling (same parameters)."""
    return _build(norm, "relu", lambda: nn.MaxPool2d(kernel_size=2, stride=2))
