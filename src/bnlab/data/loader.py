"""Device-resident batch loader: the whole uint8 dataset is one tensor, batches are index slices.

Epoch order is a pure function of ``(seed, epoch)`` drawn from the loader's own CPU
``torch.Generator`` (never the global RNG), so it is the same on every device and after a
checkpoint resume (``set_epoch`` / ``state_dict``), like ``DistributedSampler``.

Sharding (``rank``/``world_size``): the epoch's order is dealt in consecutive *global
batches* of ``batch_size * world_size`` samples, and rank ``r`` takes the ``r``-th block of
``batch_size`` from each. So one step over all ranks sees exactly what a single process with
batch ``batch_size * world_size`` would, and every rank has the same number of full batches.
The remainder (fewer than ``batch_size * world_size`` samples at the end) is split as evenly as
possible, the first ``remainder % world_size`` ranks taking one sample more, so every index
is covered exactly once per epoch; a rank whose share is empty gets no last batch. With
``drop_last`` the remainder is dropped on all ranks alike (every batch then has
``batch_size`` samples and all ranks the same ``len``).
"""

from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed mixing ``seed`` and ``epoch`` (no collisions like seed+epoch)."""
    digest = hashlib.sha256(f"bnlab.data:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """Epoch ``epoch``'s sample order (CPU int64, length ``num_samples``): a seeded
    permutation when ``shuffle``, else ``0..num_samples-1``."""
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(num_samples, generator=generator)


def shard_batches(
    order: torch.Tensor, batch_size: int, rank: int, world_size: int, drop_last: bool
) -> list[torch.Tensor]:
    """Rank ``rank``'s batches of index tensors from one epoch's ``order`` (see module doc)."""
    step = batch_size * world_size
    full = len(order) // step
    blocks = order[: full * step].view(full, world_size, batch_size)[:, rank]
    batches = list(blocks.unbind(0))
    if not drop_last and len(order) > full * step:
        tail = torch.tensor_split(order[full * step :], world_size)[rank]
        if len(tail):
            batches.append(tail)
    return batches


class TensorLoader:
    """Iterable of ``(X, y)`` batches over in-memory images and labels.

    ``images``: uint8 (N, H, W) or (N, 1, H, W); ``labels``: integer (N,). Yields ``X`` float32
    (B, 1, H, W) in [0, 1] (bilinear-resized to (B, 1, r, r) or (B, 1, h, w) with ``resize``)
    and ``y`` int64 (B,), both on ``device`` (default: the images' device), where the data is
    kept once. ``len()`` is this rank's number of batches. Each ``iter()`` runs the next epoch
    (reshuffled when ``shuffle``); ``set_epoch(k)`` chooses the epoch the next ``iter()`` runs.
    ``seed=None`` draws a fresh seed (see ``seed``/``state_dict``); with ``world_size > 1``
    and ``shuffle`` pass the same ``seed`` on every rank.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        resize: int | tuple[int, int] | None = None,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        batch_size, rank, world_size = check_batching(batch_size, rank, world_size)
        if seed is not None and not is_int(seed):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if shuffle and world_size > 1 and seed is None:
            raise ValueError("sharded shuffling needs the same explicit seed on every rank")
        if images.dtype != torch.uint8 or not (
            images.dim() == 3 or (images.dim() == 4 and images.shape[1] == 1)
        ):
            raise ValueError(f"images must be uint8 (N, H, W) or (N, 1, H, W), got "
                             f"{images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images) or labels.is_floating_point():
            raise ValueError(f"labels must be integers of shape ({len(images)},), got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        self.device = torch.device(device) if device is not None else images.device
        n = len(images)
        self.images = images.reshape(n, 1, *images.shape[-2:]).to(self.device).contiguous()
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.resize = _size_pair(resize)
        self.seed = int(seed) if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.epoch = 0
        self.location = None  # where the data came from (a DataLocation), when known

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        full, tail = self._full_and_tail()
        return full * self.batch_size + tail

    def __len__(self) -> int:
        full, tail = self._full_and_tail()
        return full + (tail > 0)

    def _full_and_tail(self) -> tuple[int, int]:
        """This rank's number of full batches and the size of its last, partial one (or 0)."""
        full, rest = divmod(len(self.labels), self.batch_size * self.world_size)
        tail = rest // self.world_size + (self.rank < rest % self.world_size)
        return full, 0 if self.drop_last else tail

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run epoch ``epoch`` (its order depends only on seed, epoch)."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """``{'seed', 'epoch'}``: enough to continue the same sequence of epochs after a resume."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def batch_indices(self, epoch: int) -> list[torch.Tensor]:
        """This rank's index batches (int64, on the loader's device) for epoch ``epoch``."""
        order = epoch_order(len(self.labels), self.seed, epoch, self.shuffle)
        return self._batches(order.to(self.device))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.batch_indices(self.epoch)
        self.epoch += 1
        return (self.batch(index) for index in batches)

    def _batches(self, order: torch.Tensor) -> list[torch.Tensor]:
        return shard_batches(order, self.batch_size, self.rank, self.world_size, self.drop_last)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples at ``index`` (int64, on the loader's device) as ``(X, y)``: X float32
        (B, 1, H, W) in [0, 1] (resized when the loader resizes), y int64 (B,)."""
        x = self.images.index_select(0, index).to(torch.float32).div_(255)
        if self.resize is not None:
            x = F.interpolate(x, size=self.resize, mode="bilinear", align_corners=False)
        return x, self.labels.index_select(0, index)

    def __repr__(self) -> str:
        return (f"TensorLoader(samples={len(self.labels)}, batch_size={self.batch_size}, "
                f"batches={len(self)}, shuffle={self.shuffle}, rank={self.rank}/"
                f"{self.world_size}, device={self.device})")


def is_int(value: object) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_batching(batch_size: int, rank: int, world_size: int) -> tuple[int, int, int]:
    """``(batch_size, rank, world_size)`` as Python ints, or ValueError naming the bad one."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not is_int(world_size) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not is_int(rank) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    return int(batch_size), int(rank), int(world_size)


def _size_pair(resize: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if resize is None:
        return None
    try:
        pair = (resize, resize) if is_int(resize) else tuple(resize)
    except TypeError:  # not iterable (a bool, a float)
        pair = ()
    if len(pair) != 2 or not all(is_int(s) and s > 0 for s in pair):
        raise ValueError(f"resize must be a positive int or (height, width), got {resize!r}")
    return int(pair[0]), int(pair[1])
