"""Integration test on the real Fashion-MNIST files (skipped when none are installed).

Runs when ``$BNLAB_DATA`` or ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``) holds the four files; the cache is redirected to a temp dir.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from bnlab.data import (
    FILES,
    FashionMNIST,
    check_files,
    encode_idx,
    load_data_fashion_mnist,
    locate,
    sources,
)

REAL_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
REAL_ENV_DIR = os.environ.get("BNLAB_DATA")  # read before the isolating fixture clears it
# MD5s of the decompressed IDX bytes, as published in the issue (independent of our SHA-256s).
ISSUE_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def _complete(directory: str | Path | None) -> bool:
    return directory is not None and all(
        sources.find_file(Path(directory), spec) is not None for spec in FILES
    )


@pytest.fixture
def real_data(monkeypatch):
    if _complete(REAL_ENV_DIR):
        monkeypatch.setenv("BNLAB_DATA", REAL_ENV_DIR)
        return "env"
    if _complete(REAL_SYSTEM_DIR):
        monkeypatch.setattr(sources, "SYSTEM_DIR", REAL_SYSTEM_DIR)
        return "system"
    pytest.skip("real Fashion-MNIST not installed (apt install dataset-fashion-mnist)")


def test_real_files_verify_and_load(real_data, isolated):
    location = locate(download=False)
    assert location.kind == real_data
    assert [c.status for c in check_files(location)] == ["official"] * 4

    train, test = load_data_fashion_mnist(64)
    assert (len(train), len(test)) == (938, 157)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    arrays = {
        "train-images-idx3-ubyte": train.images[:, 0], "train-labels-idx1-ubyte": train.labels,
        "t10k-images-idx3-ubyte": test.images[:, 0], "t10k-labels-idx1-ubyte": test.labels,
    }
    for name, array in arrays.items():
        idx_bytes = encode_idx(array.to(torch.uint8).numpy())
        assert hashlib.md5(idx_bytes).hexdigest() == ISSUE_MD5[name], name

    x, y = next(iter(train))
    assert x.shape == (64, 1, 28, 28) and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64
    # the second load is served from the decoded cache
    entries = list((isolated / "xdg" / "bnlab" / "fashion-mnist" / "decoded").iterdir())
    gz_sources = sum(p.name.endswith(".gz") for p in location.paths.values())
    assert len(entries) == gz_sources
    again = FashionMNIST(train=False)
    assert len(again) == 10000 and torch.equal(again.targets, test.labels)
