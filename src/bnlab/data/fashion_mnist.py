"""``load_data_fashion_mnist``: the notebook's one-call entry point, on bnlab's fast loader."""

from __future__ import annotations

import os

import torch

from .cache import DecodedCache
from .loader import TensorLoader, check_batching, is_int
from .read import check_same_image_size, read_split
from .sources import locate


def load_data_fashion_mnist(
    batch_size: int,
    resize: int | tuple[int, int] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    drop_last: bool = False,
    download: bool = True,
    rank: int = 0,
    world_size: int = 1,
    limit: int | None = None,
) -> tuple[TensorLoader, TensorLoader]:
    """Fashion-MNIST as ``(train_loader, test_loader)``, located, verified and cached.

    Each loader yields ``(X, y)``: ``X`` float32 (B, 1, 28, 28) in [0, 1] (bilinear
    (B, 1, r, r) with ``resize=r``), ``y`` int64 (B,), on ``device`` (default CPU), where the
    whole uint8 split is held once. ``len()`` is the number of batches (938 and 157 at batch
    64). The train loader reshuffles every epoch (reproducibly with ``seed``; see
    :class:`TensorLoader` for ``set_epoch``/``state_dict`` and the sharding over
    ``rank``/``world_size``); ``drop_last`` applies to it only. The test loader never shuffles
    and covers each test sample exactly once over all ranks. ``limit`` keeps the first
    ``limit`` samples of each split. ``root``/``download``: see :func:`locate`; each
    loader's ``location`` says which source was used.

    Raises DatasetError when the files are missing (and cannot be downloaded) or damaged.
    """
    check_batching(batch_size, rank, world_size)
    if limit is not None and (not is_int(limit) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    location = locate(root, download)
    cache = DecodedCache.default()
    train, test = read_split(location, True, cache), read_split(location, False, cache)
    check_same_image_size(location, train, test)
    common = {"resize": resize, "device": device, "rank": rank, "world_size": world_size}
    train_loader = TensorLoader(
        train.images[:limit], train.labels[:limit], batch_size,
        shuffle=shuffle, seed=seed, drop_last=drop_last, **common,
    )
    test_loader = TensorLoader(
        test.images[:limit], test.labels[:limit], batch_size, shuffle=False, **common
    )
    train_loader.location = test_loader.location = location  # reported by the runners
    return train_loader, test_loader
