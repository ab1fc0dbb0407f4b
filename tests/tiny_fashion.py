"""A tiny, learnable stand-in for Fashion-MNIST written as IDX files (for run/CLI tests).

Each class draws a bright bar at its own row band plus noise, so a LeNet learns it in an
epoch or two; the files are well-formed IDX, used through the real loading path.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from bnlab.data import encode_idx

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def make_split(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 2 + int(label) * 2
        images[i, row:row + 3, 4:24] = 220
    return images, labels


def write_tiny_fashion(directory: Path, n_train: int = 256, n_test: int = 128,
                       size: int = 28) -> Path:
    """Write the four gzipped IDX files (``size`` x ``size`` images) into ``directory``;
    returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    train, test = make_split(n_train, 0, size), make_split(n_test, 1, size)
    for name, array in zip(NAMES, (*train, *test)):
        (directory / f"{name}.gz").write_bytes(gzip.compress(encode_idx(array), mtime=0))
    return directory
