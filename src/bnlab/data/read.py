"""Reading a split from a located directory: verified, cached, as uint8/int64 tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import DecodedCache
from .errors import FIX_CUSTOM, FIX_DAMAGED, DatasetError
from .idx import MAX_DECOMPRESSED_BYTES, decode_file_bytes, parse_idx, read_file
from .sources import DataLocation
from .verify import CUSTOM, OFFICIAL, TEST, TRAIN, FileSpec, check_against_spec, sha256_hex

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
    otherwise an official file's decompressed bytes are stored in ``cache``. With
    ``allow_custom`` (a directory the user chose) errors advise correcting the file, not
    deleting it.
    """
    try:
        return _read_idx_verified(path, spec, allow_custom, cache)
    except DatasetError as err:
        if not allow_custom or err.fix != FIX_DAMAGED:
            raise
        raise DatasetError(err.file, err.expected, err.found, FIX_CUSTOM) from None


def _read_idx_verified(
    path: Path, spec: FileSpec, allow_custom: bool, cache: DecodedCache | None
) -> tuple[np.ndarray, str]:
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
    (images_path, images, images_status), (labels_path, labels, labels_status) = (
        _read_checked(location, file_spec, cache) for file_spec in (spec.images, spec.labels))
    _check_pair(images_path, images, labels_path, labels, _fix(location))
    status = OFFICIAL if images_status == labels_status == OFFICIAL else CUSTOM
    return Split(_tensor(images), _tensor(labels).long(), status)


def check_same_image_size(location: DataLocation, train: Split, test: Split) -> None:
    """DatasetError unless the two splits' images have the same height and width."""
    _check_sizes(location, tuple(train.images.shape[1:]), tuple(test.images.shape[1:]))


def _check_sizes(location: DataLocation, train_size: tuple, test_size: tuple) -> None:
    if train_size != test_size:
        raise DatasetError(location.path(TEST.images),
                           f"images of the train split's size {train_size}",
                           f"images of size {test_size}", _fix(location))


def check_files(location: DataLocation, cache: DecodedCache | None = None) -> list[FileCheck]:
    """Verify the four files as :func:`read_split` does, each split's images against its
    labels, for reports: one entry per file, errors returned, not raised."""
    checks, sizes = [], {}
    for split in (TRAIN, TEST):
        read = {}
        for spec in (split.images, split.labels):
            path = location.path(spec)
            try:
                read[spec.name] = _read_checked(location, spec, cache)
                checks.append(FileCheck(spec, path, read[spec.name][2]))
            except DatasetError as err:
                checks.append(FileCheck(spec, path, None, err))
        if len(read) == 2:  # both well-formed: do they belong together?
            (images_path, images, _), (labels_path, labels, _) = read.values()
            sizes[split] = images.shape[1:]
            try:
                _check_pair(images_path, images, labels_path, labels, _fix(location))
            except DatasetError as err:
                checks[-1] = FileCheck(split.labels, labels_path, None, err)
    if len(sizes) == 2:  # and do the splits' images belong together?
        try:
            _check_sizes(location, sizes[TRAIN], sizes[TEST])
        except DatasetError as err:
            checks[2] = FileCheck(TEST.images, location.path(TEST.images), None, err)
    return checks


def _fix(location: DataLocation) -> str:
    return FIX_CUSTOM if location.explicit else FIX_DAMAGED


def _read_checked(
    location: DataLocation, spec: FileSpec, cache: DecodedCache | None
) -> tuple[Path, np.ndarray, str]:
    """One file verified and checked to hold uint8 data of its spec's rank, no image
    dimension empty: ``(path, array, status)``."""
    path = location.path(spec)
    array, status = read_idx_verified(path, spec, allow_custom=location.explicit, cache=cache)
    if array.dtype != np.uint8 or array.ndim != len(spec.shape) or 0 in array.shape[1:]:
        raise DatasetError(
            path,
            f"uint8 data of rank {len(spec.shape)} ({spec.name}), no empty dimension",
            f"{array.dtype} data of shape {array.shape}", _fix(location))
    return path, array, status


def _check_pair(
    images_path: Path, images: np.ndarray, labels_path: Path, labels: np.ndarray, fix: str
) -> None:
    """A split's images and labels: one label in 0..9 per image, at least one image."""
    if len(images) != len(labels) or len(labels) == 0:
        raise DatasetError(
            labels_path,
            f"one label per image in {images_path.name} (at least one)",
            f"{len(labels)} labels for {len(images)} images", fix)
    if int(labels.max()) >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DatasetError(
            labels_path, f"labels 0..{NUM_CLASSES - 1}", f"label {labels[bad]} at index {bad}",
            fix)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array if array.flags.writeable else array.copy())
