"""Verification against pinned checksums, the decoded cache, and crash-safe writes."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bnlab import atomic_files as atomic_module
from bnlab.atomic_files import atomic_write
from bnlab.data import TRAIN, DatasetError, DecodedCache, FileSpec, encode_idx, locate, read, verify
from bnlab.data.read import read_idx_verified

IMAGES = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
RAW = encode_idx(IMAGES)
SPEC = FileSpec("train-images-idx3-ubyte", (2, 28, 28), hashlib.sha256(RAW).hexdigest(), "")


def test_pinned_sizes_are_the_official_decompressed_sizes():
    assert [spec.size for spec in verify.FILES] == [47040016, 60008, 7840016, 10008]
    assert TRAIN.images.archive == "train-images-idx3-ubyte.gz"


def test_official_length_with_wrong_checksum_is_an_error_even_in_a_root(tmp_path, make_tiny):
    tiny = make_tiny(tmp_path)  # tiny custom files, except the train labels below
    labels = np.zeros(60000, dtype=np.uint8)  # the official length, the wrong content
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode_idx(labels)))
    location = locate(tiny.directory)
    with pytest.raises(DatasetError) as info:
        read.read_split(location, train=True)
    err = info.value
    assert err.file == str(tmp_path / "train-labels-idx1-ubyte.gz")
    assert TRAIN.labels.sha256 in err.expected
    assert hashlib.sha256(encode_idx(labels)).hexdigest() in err.found


def test_custom_sizes_only_from_explicit_directories():
    assert verify.check_against_spec(RAW, TRAIN.images, "f", allow_custom=True) == "custom"
    with pytest.raises(DatasetError, match="47040016 bytes unpacked"):
        verify.check_against_spec(RAW, TRAIN.images, "f", allow_custom=False)
    assert verify.check_against_spec(RAW, SPEC, "f", allow_custom=False) == "official"


def write_gz(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(RAW, mtime=0))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_entry_is_the_decompressed_bytes_keyed_by_archive_checksum(tmp_path, monkeypatch):
    path, key = write_gz(tmp_path)
    cache = DecodedCache(tmp_path / "decoded")
    array, status = read_idx_verified(path, SPEC, allow_custom=False, cache=cache)
    assert status == "official" and np.array_equal(array, IMAGES)
    assert (tmp_path / "decoded" / f"{key}.idx").read_bytes() == RAW
    # a second read never decompresses: the cache answers
    monkeypatch.setattr(read, "decode_file_bytes", pytest.fail)
    array, status = read_idx_verified(path, SPEC, allow_custom=False, cache=cache)
    assert status == "official" and np.array_equal(array, IMAGES) and array.flags.writeable


def test_damaged_cache_entry_is_rebuilt_not_trusted(tmp_path):
    path, key = write_gz(tmp_path)
    entry = tmp_path / "decoded" / f"{key}.idx"
    entry.parent.mkdir()
    for damage in (RAW[:100], RAW[:-1] + b"\x01", RAW + b"\0"):
        entry.write_bytes(damage)
        cache = DecodedCache(entry.parent)
        array, _ = read_idx_verified(path, SPEC, allow_custom=False, cache=cache)
        assert np.array_equal(array, IMAGES) and entry.read_bytes() == RAW


def test_custom_files_are_not_cached(tmp_path):
    path, _ = write_gz(tmp_path)
    cache = DecodedCache(tmp_path / "decoded")
    _, status = read_idx_verified(path, TRAIN.images, allow_custom=True, cache=cache)
    assert status == "custom" and not cache.directory.exists()


def test_crash_mid_cache_write_leaves_no_entry_and_loading_still_works(tmp_path, monkeypatch):
    path, key = write_gz(tmp_path)
    cache = DecodedCache(tmp_path / "decoded")

    def crash(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_module.os, "replace", crash)
    with pytest.warns(RuntimeWarning, match="could not write the decoded cache"):
        array, _ = read_idx_verified(path, SPEC, allow_custom=False, cache=cache)
    assert np.array_equal(array, IMAGES)
    assert list(cache.directory.iterdir()) == []  # no entry, no temp file


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as out:
        out.write(b"half of the new")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f"]
    with atomic_write(target) as out:
        out.write(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_killed_process_mid_write_leaves_only_a_part_file(tmp_path):
    """A real crash (os._exit: no cleanup runs) never exposes a partial target."""
    script = textwrap.dedent(f"""
        import importlib.util, os, pathlib
        spec = importlib.util.spec_from_file_location("atomic", {atomic_module.__file__!r})
        atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)
        with atomic.atomic_write(pathlib.Path({str(tmp_path / "target")!r})) as out:
            out.write(b"partial"); out.flush()
            os._exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert result.returncode == 3
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 1 and names[0].startswith(".target.") and names[0].endswith(".part")
