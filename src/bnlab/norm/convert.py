"""Swap every batch-norm layer of a model between bnlab's and torch's implementations."""

from __future__ import annotations

import copy

from torch import nn

from .modules import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormBase

__all__ = ["convert"]

_TO_BNLAB = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d}
_TO_TORCH = {BatchNorm1d: nn.BatchNorm1d, BatchNorm2d: nn.BatchNorm2d, BatchNorm3d: nn.BatchNorm3d}
_NOTEBOOK_TO_TORCH = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _target_class(layer: nn.Module, to: str) -> type[nn.Module] | None:
    if to == "bnlab":
        return _TO_BNLAB.get(type(layer))
    if isinstance(layer, BatchNorm):
        return _NOTEBOOK_TO_TORCH[layer.num_dims]
    from .sync import SyncBatchNorm  # sync.py builds on this module: imported on use

    if type(layer) is SyncBatchNorm:
        return nn.SyncBatchNorm
    return _TO_TORCH.get(type(layer))


def _swap(layer: nn.Module, cls: type[nn.Module]) -> nn.Module:
    if cls is nn.SyncBatchNorm:  # keeps its process group
        return swap_layer(layer, cls, process_group=layer.process_group)
    return swap_layer(layer, cls)


def _public_name(cls: type) -> str:
    """``torch.nn.X`` or ``bnlab.X``: the two sides of a conversion share class names."""
    return f"{'torch.nn' if cls.__module__.startswith('torch.') else 'bnlab'}.{cls.__name__}"


def swap_layer(layer: nn.Module, cls: type[nn.Module], **kwargs) -> nn.Module:
    """A ``cls(..., **kwargs)`` layer holding ``layer``'s very parameters, buffers, settings
    and mode (no copies: built on the meta device, then handed the tensors). A fused
    activation and pooling carry over to bnlab layers; torch's layers have none (ValueError)."""
    activation = getattr(layer, "activation", None)
    pool = getattr(layer, "pool", None)
    if not issubclass(cls, BatchNormBase):
        for name, value, module in (("activation", activation, "the activation module"),
                                    ("pool", pool, "nn.AvgPool2d(2)")):
            if value is not None:
                raise ValueError(f"{_public_name(type(layer))} applies {name}={value!r}, "
                                 f"which {_public_name(cls)} cannot; follow it with {module} "
                                 "instead")
    has_stats = layer.running_mean is not None
    new = cls(
        layer.num_features,
        eps=layer.eps,
        momentum=layer.momentum,
        affine=layer.affine,
        track_running_stats=has_stats,
        device="meta",
        **kwargs,
    )
    # Flags switched after construction (e.g. track_running_stats=False) carry over as-is.
    new.track_running_stats = layer.track_running_stats
    if isinstance(new, BatchNormBase):
        new.activation = activation
        new.pool = pool
    for name in ("weight", "bias"):  # None stays None (affine=False, or bias=False)
        new.register_parameter(name, getattr(layer, name))
    for name, buf in layer.named_buffers(recurse=False):
        new.register_buffer(name, buf)
    if hasattr(layer, "qconfig"):
        new.qconfig = layer.qconfig
    new.train(layer.training)
    return new


def convert(module: nn.Module, to: str = "bnlab") -> nn.Module:
    """A deep copy of ``module`` with every batch-norm layer swapped for the other kind.

    ``to="bnlab"``: ``nn.BatchNorm1d/2d/3d`` become ``bnlab.BatchNorm1d/2d/3d``.
    ``to="torch"``: bnlab layers (including the notebook's ``BatchNorm``) become torch's,
    ``bnlab.SyncBatchNorm`` ``nn.SyncBatchNorm`` (same process group).
    Parameters (the same values, ``requires_grad`` kept), running statistics, settings and
    train/eval mode are preserved; other layers are untouched. Subclasses of torch's layers
    (e.g. ``nn.SyncBatchNorm``: see :func:`bnlab.convert_sync_batchnorm`) are left alone by
    ``to="bnlab"``. Hooks on swapped layers are not copied.
    """
    if to not in ("bnlab", "torch"):
        raise ValueError(f"convert(to=...) must be 'bnlab' or 'torch', got {to!r}")
    # Process groups are handles to shared communicators, not state: the copy keeps them.
    groups = {id(g): g for m in module.modules()
              if (g := getattr(m, "process_group", None)) is not None}
    model = copy.deepcopy(module, memo=dict(groups))
    cls = _target_class(model, to)
    if cls is not None:
        return _swap(model, cls)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            cls = _target_class(child, to)
            if cls is not None:
                setattr(parent, name, _swap(child, cls))
    return model


def is_batch_norm(module: nn.Module) -> bool:
    """True for bnlab's and torch's batch-norm layers."""
    return isinstance(module, (BatchNormBase, nn.modules.batchnorm._BatchNorm))
