"""Crash-safe file replacement: write a temp file beside the target, fsync, then rename.

A reader sees either the old file or the complete new one, never a part: an interrupted
write leaves at most a hidden ``.<name>.*.part`` temp file, a name nothing ever reads.
Used for data caches, metrics and plots; checkpoints (whole directories) build on
:func:`fsync_directory`. Only the standard library is used (tests load this module on its
own in a child process).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

PART_SUFFIX = ".part"


def fsync_directory(directory: Path, *, strict: bool = False) -> None:
    """Make the renames inside ``directory`` durable (fsync the directory itself).

    A no-op where directories cannot be opened (not POSIX). Otherwise a failure raises
    OSError when ``strict``, and is ignored when not (the file itself was fsynced already;
    only the rename's durability is at stake).
    """
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if strict:
            raise


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file (its ``.name`` is the temp path) that becomes ``path`` on success.

    The block's writes are flushed and fsynced, then the temp file is renamed over ``path``
    and the directory fsynced. If the block raises, the temp file is removed and ``path`` is
    left as it was. Raises OSError when the directory is not writable.
    """
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PART_SUFFIX)
    os.close(fd)
    temp = Path(temp_name)
    try:
        os.chmod(temp, 0o644)  # mkstemp makes 0600; data files are ordinary readable files
        with open(temp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(OSError):
            temp.unlink()
        raise
    fsync_directory(path.parent)


def write_bytes_atomically(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as handle:
        handle.write(data)

