"""Reading a split from a located directory: verified, cached, as uint8/int64 tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import DecodedCache
from .errors import DatasetError
from .idx import MAX_DECOMPRESSED_BYTES, decode_file_bytes, parse_idx, read_file
from .sources import DataLocation
from .verify import CUSTOM, FILES, OFFICIAL, TEST, TRAIN, FileSpec, check_against_spec, sha256_hex

NUM_CLASSES = 10


@dataclass(frozen=True)
class Split:
    """One split in memory: ``images`` uint8 (N, H, W) (28x28 for Fashion-MNIST), ``labels``
    int64 (N,) in [0, 10), and ``status``: ``'official'`` when both files matched the pinned
    checksums, ``'custom'`` for a user's own well-formed files in an explicit directory."""

    images: torch.Tensor
    labels: torch.Tensor
    status: str


@dataclass(frozen=True)
class FileCheck:
    """Outcome of verifying one file: ``status`` is ``'official'``/``'custom'``, or ``error``."""

    spec: FileSpec
    path: Path
    status: str | None
    error: DatasetError | None = None


def read_idx_verified(
    path: Path, spec: FileSpec, *, allow_custom: bool, cache: DecodedCache | None
) -> tuple[np.ndarray, str]:
    """Parse and verify one file; returns (array, 'official' | 'custom').

    A ``.gz`` file whose archive SHA-256 has a valid cache entry skips decompression;
    otherwise an official file's decompressed bytes are stored in ``cache``.
    """
    data = read_file(path)
    key = sha256_hex(data) if cache is not None and path.name.endswith(".gz") else None
    if key is not None and (cached := cache.get(key, spec)) is not None:
        return parse_idx(cached, path), OFFICIAL
    limit = MAX_DECOMPRESSED_BYTES if allow_custom else spec.size
    raw = decode_file_bytes(data, path, max_size=limit)
    array = parse_idx(raw, path)
    status = check_against_spec(raw, spec, path, allow_custom=allow_custom)
    if key is not None and status == OFFICIAL:
        cache.put(key, raw)
    return array, status


def read_split(
    location: DataLocation, train: bool, cache: DecodedCache | None = None
) -> Split:
    """Load the train (60000) or test (10000) split from ``location``, verified.

    Raises DatasetError for any damaged or inconsistent file (shapes, types, label range).
    """
    spec = TRAIN if train else TEST
    parts = []
    for file_spec in (spec.images, spec.labels):
        path = location.path(file_spec)
        array, status = read_idx_verified(
            path, file_spec, allow_custom=location.explicit, cache=cache
        )
        if array.dtype != np.uint8 or array.ndim != len(file_spec.shape):
            raise DatasetError(
                path,
                f"uint8 data of rank {len(file_spec.shape)} ({file_spec.name})",
                f"{array.dtype} data of shape {array.shape}",
            )
        parts.append((path, array, status))
    (images_path, images, images_status), (labels_path, labels, labels_status) = parts
    if len(images) != len(labels):
        raise DatasetError(
            labels_path,
            f"{len(images)} labels (one per image in {images_path.name})",
            f"{len(labels)} labels",
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DatasetError(
            labels_path, f"labels 0..{NUM_CLASSES - 1}", f"label {labels[bad]} at index {bad}"
        )
    status = OFFICIAL if images_status == labels_status == OFFICIAL else CUSTOM
    return Split(_tensor(images), _tensor(labels).long(), status)


def check_files(location: DataLocation, cache: DecodedCache | None = None) -> list[FileCheck]:
    """Verify each of the four files on its own (for reports); errors are returned, not raised."""
    checks = []
    for spec in FILES:
        path = location.path(spec)
        try:
            _, status = read_idx_verified(path, spec, allow_custom=location.explicit, cache=cache)
            checks.append(FileCheck(spec, path, status))
        except DatasetError as err:
            checks.append(FileCheck(spec, path, None, err))
    return checks


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array if array.flags.writeable else array.copy())
