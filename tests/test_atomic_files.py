"""bnlab.atomic_files: directory fsync strictness (the rest is tested with its users: the
decoded-data cache, downloads and checkpoints)."""

import os

import pytest

from bnlab.atomic_files import fsync_directory, write_bytes_atomically


@pytest.mark.skipif(os.name != "posix", reason="directories are fsynced on POSIX only")
def test_directory_fsync_failure_raises_only_when_strict(tmp_path):
    missing = tmp_path / "gone"
    fsync_directory(missing)  # the data paths: best effort
    with pytest.raises(FileNotFoundError):
        fsync_directory(missing, strict=True)  # checkpoints: a failure is an error
    fsync_directory(tmp_path, strict=True)


def test_write_bytes_atomically_replaces_the_file(tmp_path):
    target = tmp_path / "f.bin"
    write_bytes_atomically(target, b"one")
    write_bytes_atomically(target, b"two")
    assert target.read_bytes() == b"two" and os.listdir(tmp_path) == ["f.bin"]
