"""Recognise pickle files (``torch.save``, ``pickle.dump``) by their bytes or name, without
unpickling anything, so they can be refused before any code in them could run; and reading
a file of bounded size without following it into a device or pipe."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

from .errors import CheckpointError

__all__ = ["PICKLE_SUFFIXES", "looks_like_pickle", "read_limited", "refuse_pickle"]

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
_ZIP_MAGIC = b"PK\x03\x04"


def read_limited(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path`` when it is a regular file of at most ``limit`` bytes, else None
    (a device such as /dev/zero, a pipe, or a file too large to be what it claims). Raises
    OSError where it cannot be opened."""
    # O_NONBLOCK: opening a named pipe must not wait for a writer
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:  # (a directory opens too)
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as handle:
        # The file's own size, not the limit: read(n) allocates n bytes first, and a limit
        # comes from a manifest that may claim terabytes. One byte more: it may have grown.
        data = handle.read(info.st_size + 1)
        while info.st_size < len(data) <= limit:  # it grew: the rest in bounded chunks
            chunk = handle.read(min(1 << 20, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    return data if len(data) <= limit else None


def _zip_holds_pickle(source: Path | io.BytesIO) -> bool:
    # reading a zip's directory only parses names; nothing in the archive is executed
    try:
        with zipfile.ZipFile(source) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def looks_like_pickle(path: Path, data: bytes | None = None) -> bool:
    """True if ``path`` is a pickle by name (``.pt .pth .ckpt .pkl .pickle``) or by content: a
    pickle protocol 2-5 header (``0x80`` then the protocol byte) or a zip holding a ``*.pkl``
    member (``torch.save``'s format, e.g. ``archive/data.pkl``). ``data``: the file's bytes,
    if already read (else the file is read)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    if data is None:
        try:
            with open(path, "rb") as f:
                head = f.read(9)
                size = os.fstat(f.fileno()).st_size
        except OSError:
            return False
        source: Path | io.BytesIO = path
    else:
        head, size, source = data[:9], len(data), io.BytesIO(data)
    if _is_safetensors_start(head, size):
        return False
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    return head.startswith(_ZIP_MAGIC) and _zip_holds_pickle(source)


def _is_safetensors_start(head: bytes, size: int) -> bool:
    """Whether ``head`` (a file's first 9 bytes) opens a safetensors file of ``size`` bytes:
    a little-endian 8-byte header length that fits, then the header's ``{``. Its first byte
    may be 0x80 (a header of 640 or 896 bytes, ...), which alone would read as a pickle."""
    return (len(head) == 9 and head[8:9] == b"{"
            and int.from_bytes(head[:8], "little") <= size - 8)


def refuse_pickle(path: Path, inside: Path | None = None, data: bytes | None = None) -> None:
    """Raise :class:`CheckpointError` if ``path`` (or its already-read ``data``) looks like a
    pickle; ``inside``: the checkpoint directory it was found in, named in the message."""
    if not looks_like_pickle(path, data):
        return
    where = path if inside is None else inside
    what = "is a pickle file" if inside is None else f"holds a pickle file {path.name}"
    raise CheckpointError(
        where,
        f"{what} (torch.save); bnlab checkpoints are safetensors + JSON and never unpickle "
        "untrusted files, so it was not opened",
        "give the directory written by bnlab's save_checkpoint, or re-save the weights as a "
        "bnlab checkpoint from code you trust",
    )
