"""The notebook's data path: torchvision's ``FashionMNIST(transform=ToTensor())`` through a
per-sample ``DataLoader``, rebuilt without torchvision (bnlab does not depend on it). Per
sample it does what torchvision does: a PIL image from the uint8 array, then ``ToTensor``
(copy to a tensor, HWC -> CHW, float, / 255). Not bnlab code; a baseline."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bnlab.data import FashionMNIST


def to_tensor(pic: Image.Image) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for a mode-"L" PIL image."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], 1).permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


class TorchvisionStyleFashionMNIST(Dataset):
    """Item ``i``: ``(to_tensor(PIL image), int label)``, as torchvision's dataset gives it."""

    def __init__(self, train: bool) -> None:
        split = FashionMNIST(train=train, download=False)
        self.data, self.targets = split.data, split.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[index], int(self.targets[index])
        return to_tensor(Image.fromarray(img.numpy())), target


def notebook_loaders(batch_size: int) -> tuple[DataLoader, DataLoader]:
    """``(train, test)`` loaders as the notebook's ``load_data_fashion_mnist`` builds them."""
    return (DataLoader(TorchvisionStyleFashionMNIST(True), batch_size, shuffle=True),
            DataLoader(TorchvisionStyleFashionMNIST(False), batch_size, shuffle=False))
