"""``SyncBatchNorm``: batch norm whose training statistics span every process of a group,
on any torch.distributed backend (gloo on CPU, nccl on CUDA); and
``convert_sync_batchnorm``, which puts it in place of a model's batch-norm layers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .checks import (
    BatchNormArgumentError,
    check_dtypes,
    check_input,
    check_per_channel,
    dense_input,
    flat_channels,
)
from .convert import is_batch_norm, swap_layer
from .functional import apply_activation, apply_pool, check_pool, update_running_stats
from .modules import BatchNormBase
from .sync_autograd import SyncBatchNormFunction, sync_batch_stats

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "sync_batch_norm"]


def sync_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """Training-mode batch norm of this rank's ``input`` (N, C, *) with statistics over all
    ranks of ``group`` (None: the default group). A collective: every rank calls it, also
    one whose N is 0 (it gets an empty output). Running statistics (when given) are updated
    in place with the global mean and the unbiased global variance ``var * n / (n - 1)``,
    identically on every rank. Raises ValueError on every rank when the global count of
    values per channel is 1 (and, before any communication, for input that is not real
    floating point, ``eps`` <= 0, or per-channel tensors that do not fit the input as
    :func:`bnlab.functional.batch_norm` refuses them).
    """
    # Every local check before the collective: a rank that raises later leaves the others
    # waiting for it until the timeout.
    check_per_channel(input, running_mean, running_var, weight, bias)
    check_dtypes(input, (weight, bias, running_mean, running_var))
    check_input(input, eps, training=True)
    input, weight, bias = dense_input(input), flat_channels(weight), flat_channels(bias)
    mean, var, count = sync_batch_stats(input, group)
    if count == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, got 1 over all processes "
            f"(this process's input size {tuple(input.shape)})"
        )
    if count > 0:
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return SyncBatchNormFunction.apply(input, mean, var, weight, bias, eps, count, group)


class SyncBatchNorm(BatchNormBase):
    """Batch norm over (N, C, *) input whose training statistics are those of the batch
    concatenated over every process of ``process_group`` (None: the default group).

    Per-process batch sizes may differ, including 0. In training with an initialized
    process group of more than one process the forward gathers per-rank moments and the
    backward all-reduces ``sum(dy)`` and ``sum(dy * x_hat)``; the gradients of ``weight`` and
    ``bias`` are this process's own (DDP averages them, as for ``torch.nn.SyncBatchNorm``).
    Otherwise (eval mode, no process group, a group of one) it is exactly
    :class:`bnlab.BatchNorm2d` and friends. Parameters, buffers and state_dict are those of
    ``torch.nn.SyncBatchNorm``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        activation: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device, dtype, bias=bias, activation=activation)
        self.process_group = process_group

    # Whether the group's processes have been seen to agree on num_features (checked on the
    # first synchronized step; a class default, so layers built by swap_layer start unchecked).
    _channels_agreed = False

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _sync_group(self) -> dist.ProcessGroup | None:
        """The group to synchronize over now, or None to take the local path."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return super().forward(input)  # one call_module node, as for every bnlab layer
        group = self._sync_group()
        if group is None:
            return super().forward(input)
        self._check_input_dim(input)
        check_pool(self.pool, input)
        if input.shape[1] != self.num_features:
            raise BatchNormArgumentError(
                f"SyncBatchNorm({self.num_features}) got input with {input.shape[1]} channels "
                f"(shape {tuple(input.shape)}); expected {self.num_features} in dim 1"
            )
        # (Not while compiling: traced, its collective would be left unwaited; and
        # torch.compiler.disable at import would import torch._dynamo, and with it Triton,
        # with every `import bnlab`.)
        if not torch.compiler.is_compiling() and not self._channels_agreed:
            _agree_on_channels(self.num_features, input.device, group)
            self._channels_agreed = True
        factor = 0.0 if self.momentum is None else self.momentum
        # Counted once the batch is accepted, as in BatchNormBase.forward.
        tracked = self.num_batches_tracked if self.track_running_stats else None
        if tracked is not None and self.momentum is None:
            factor = 1.0 / (float(tracked) + 1.0)
        # With tracking switched off after construction, training leaves the buffers alone.
        track = self.track_running_stats
        out = sync_batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            factor,
            self.eps,
            group,
        )
        if tracked is not None:
            tracked.add_(1)
        return apply_pool(apply_activation(out, self.activation), self.pool)


def _agree_on_channels(channels: int, device: torch.device,
                       group: dist.ProcessGroup) -> None:
    """Raise BatchNormArgumentError on every process of ``group`` unless all have
    ``channels`` channels: the statistics' all_gather would otherwise abort one process
    (its sizes differ) and hand the others wrong numbers."""
    mine = torch.tensor([channels], dtype=torch.int64, device=device)
    counts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, mine, group=group)
    everyone = [int(c) for c in counts]
    if len(set(everyone)) > 1:
        raise BatchNormArgumentError(
            f"SyncBatchNorm: the processes disagree on the channel count ({everyone}, by "
            "rank in the group); every process must build the same model")


def _to_sync(layer: nn.Module, group: dist.ProcessGroup | None) -> SyncBatchNorm:
    """A SyncBatchNorm holding ``layer``'s very parameters, buffers, settings and mode."""
    return swap_layer(layer, SyncBatchNorm, process_group=group)


def convert_sync_batchnorm(
    module: nn.Module, process_group: dist.ProcessGroup | None = None
) -> nn.Module:
    """Replace every batch-norm layer of ``module`` by a :class:`SyncBatchNorm`, in place.

    Converted: bnlab's ``BatchNorm1d/2d/3d``, the notebook's ``BatchNorm``, ``SyncBatchNorm``
    (re-targeted to ``process_group``) and torch's ``nn.BatchNorm1d/2d/3d`` and
    ``nn.SyncBatchNorm`` (and their subclasses). As ``nn.SyncBatchNorm.convert_sync_batchnorm``:
    the new layers hold the very same parameter and buffer tensors (so call it before building
    the optimizer), settings and train/eval mode are kept, and the model is modified and
    returned — or, when ``module`` itself is a batch-norm layer, its replacement.
    """
    if is_batch_norm(module):
        return _to_sync(module, process_group)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if is_batch_norm(child):
                setattr(parent, name, _to_sync(child, process_group))
    return module
