"""``FashionMNIST``: a map-style ``torch.utils.data.Dataset`` for ``DataLoader`` users."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from .cache import DecodedCache
from .read import read_split
from .sources import locate

# Label i names class i (Zalando's names).
CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class FashionMNIST(Dataset):
    """The train (60000) or test (10000) split; item ``i`` is ``(image, label)``.

    ``image`` is float32 (1, 28, 28) in [0, 1] (like torchvision's ``ToTensor``), passed
    through ``transform`` when given; ``label`` is an int in [0, 10). The uint8 images
    (N, 28, 28) and int64 labels are kept as ``data`` and ``targets``; ``location`` says where
    the files came from. ``root``/``download``: see :func:`bnlab.data.locate`.
    """

    classes = CLASSES

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        train: bool = True,
        transform: Callable[[torch.Tensor], object] | None = None,
        *,
        download: bool = True,
    ) -> None:
        self.location = locate(root, download)
        split = read_split(self.location, train, DecodedCache.default())
        self.data, self.targets, self.status = split.images, split.labels, split.status
        self.train, self.transform = train, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[object, int]:
        image = self.data[index].unsqueeze(0).to(torch.float32).div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])
