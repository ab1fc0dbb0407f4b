"""Batch-norm modules: a thin base that picks the mode and momentum factor and calls the
stateless :func:`bnlab.functional.batch_norm`; subclasses only check the input rank.

Parameters, buffers, state_dict keys and mode semantics match ``torch.nn.BatchNorm*``, so
state dicts load both ways.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .checks import BatchNormArgumentError
from .functional import batch_norm, check_activation, check_pool

__all__ = ["BatchNormBase", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNorm"]

_Proxy = torch.fx.Proxy


class BatchNormBase(nn.Module):
    """Shared state and forward of the batch-norm layers.

    ``weight``/``bias`` (C,) when ``affine`` (no ``bias`` with ``bias=False``); buffers
    ``running_mean``, ``running_var`` (C,) and ``num_batches_tracked`` (int64 scalar) when
    ``track_running_stats``.
    ``momentum=None`` uses a cumulative moving average over the batches seen since
    :meth:`reset_running_stats`. ``activation`` (bnlab's own, keyword-only: None, "relu" or
    "sigmoid") is applied to the output, fused into the layer's kernel (see
    :func:`bnlab.functional.batch_norm`); it is a setting, not state, so state dicts are
    unchanged. So is ``pool`` (:class:`BatchNorm2d`'s).
    """

    _version = 2  # torch's version of this state_dict layout (has num_batches_tracked)
    activation: str | None = None  # layers pickled before the setting existed have none
    pool: int | None = None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        check_activation(activation)
        factory = {"device": device, "dtype": dtype}
        self.activation = activation
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked",
                torch.tensor(0, dtype=torch.long, device=device),
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, batch counter 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, and weight to 1 and bias to 0."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        text = (
            "{num_features}, eps={eps}, momentum={momentum}, affine={affine}, "
            "bias={use_bias}, track_running_stats={track_running_stats}".format(
                **self.__dict__, use_bias=self.bias is not None
            )
        )
        if self.activation is not None:
            text = f"{text}, activation={self.activation}"
        return text if self.pool is None else f"{text}, pool={self.pool}"

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # State dicts saved before num_batches_tracked existed (torch < 0.4.1) lack it.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = (
                self.num_batches_tracked
                if self.num_batches_tracked is not None
                and self.num_batches_tracked.device != torch.device("meta")
                else torch.tensor(0, dtype=torch.long)
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, _Proxy):
            return _traced_call(self, input)
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise BatchNormArgumentError(
                f"{type(self).__name__}({self.num_features}) got input with "
                f"{input.shape[1]} channels (shape {tuple(input.shape)}); expected "
                f"{self.num_features} in dim 1"
            )
        # Read parameters and buffers from their dicts: nn.Module's __getattr__ costs more
        # than the whole kernel on small inputs.
        params, buffers = self._parameters, self._buffers
        # (Pruning and parametrizations take weight/bias out of the dict; the attribute stays.)
        weight = params["weight"] if "weight" in params else self.weight
        bias = params["bias"] if "bias" in params else self.bias
        running_mean, running_var = buffers["running_mean"], buffers["running_var"]
        training, momentum = self.training, self.momentum
        factor = 0.0 if momentum is None else momentum
        # batch_norm increments the batch counter once it has accepted the batch (in the
        # fused op); the cumulative average's factor uses the count that batch makes.
        tracked = buffers["num_batches_tracked"] if training and self.track_running_stats else None
        if tracked is not None and momentum is None:
            factor = 1.0 / (float(tracked) + 1.0)
        # Batch statistics in training, and in eval when there are no running statistics.
        use_batch_stats = training or (running_mean is None and running_var is None)
        # With tracking switched off after construction, training leaves the buffers alone.
        if training and not self.track_running_stats:
            running_mean = running_var = None
        return batch_norm(input, running_mean, running_var, weight, bias,
                          use_batch_stats, factor, self.eps, activation=self.activation,
                          num_batches_tracked=tracked, pool=self.pool)


def _traced_call(module: nn.Module, input: torch.fx.Proxy) -> torch.fx.Proxy:
    """Under ``torch.fx.symbolic_trace``: one ``call_module`` node for the whole layer, as
    torch's batch-norm layers are leaf modules (their checks and mode run when it is called)."""
    tracer = input.tracer
    return tracer.create_proxy("call_module", tracer.path_of_module(module), (input,), {})


def _rank_error(expected: str, input: Tensor) -> ValueError:
    return ValueError(f"expected {expected} input (got {input.dim()}D input)")


class BatchNorm1d(BatchNormBase):
    """Batch norm over (N, C) or (N, C, L) input; statistics per channel C."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise _rank_error("2D (N, C) or 3D (N, C, L)", input)


class BatchNorm2d(BatchNormBase):
    """Batch norm over (N, C, H, W) input; statistics per channel C.

    ``pool=2`` (bnlab's own, keyword-only): the layer ends with a 2x2 average pooling, stride
    2 (``nn.AvgPool2d(2)`` after the activation; output (N, C, H // 2, W // 2)), done in the
    same kernel pass (see :func:`bnlab.functional.batch_norm`).
    """

    def __init__(self, num_features: int, *args, pool: int | None = None, **kwargs) -> None:
        check_pool(pool)
        super().__init__(num_features, *args, **kwargs)
        self.pool = pool

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise _rank_error("4D (N, C, H, W)", input)


class BatchNorm3d(BatchNormBase):
    """Batch norm over (N, C, D, H, W) input; statistics per channel C."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise _rank_error("5D (N, C, D, H, W)", input)


class BatchNorm(BatchNormBase):
    """The notebook's two-argument form: ``BatchNorm(num_features, num_dims)``.

    ``num_dims`` is the input rank: 2 for fully connected (N, C) input, 4 for convolutional
    (N, C, H, W) input (3 and 5 work too). Otherwise identical to ``BatchNorm1d/2d/3d``;
    keyword arguments as theirs.
    """

    def __init__(self, num_features: int, num_dims: int, **kwargs) -> None:
        if num_dims not in (2, 3, 4, 5):
            raise ValueError(f"num_dims must be 2, 3, 4 or 5 (the input rank), got {num_dims}")
        super().__init__(num_features, **kwargs)
        self.num_dims = num_dims

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != self.num_dims:
            raise _rank_error(f"{self.num_dims}D", input)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_dims={self.num_dims}"
