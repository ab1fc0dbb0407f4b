"""Replace a whole directory so that a crash at any point leaves the complete old or the
complete new version.

Protocol for ``target`` (siblings live in its parent, so every rename stays on one filesystem):

1. write every file into a fresh ``.<name>.tmp-<stamp>`` directory, fsync each file and the
   directory;
2. rename ``target`` aside to ``.<name>.old-<stamp>`` (if it exists);
3. rename the temp directory to ``target`` and fsync the parent;
4. remove the old directory.

A crash between 2 and 3 leaves no ``target`` but a complete ``.old-`` copy:
:func:`find_directory` returns it to readers and the next :func:`replace_directory` renames it
back before doing anything else. Leftover ``.tmp-``/``.old-`` siblings are removed on the next
save. One writer per target at a time.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

from ..atomic_files import fsync_directory

__all__ = ["find_directory", "fsync_directory", "read_consistently", "replace_directory",
           "write_file"]

_TMP, _OLD = "tmp", "old"
_T = TypeVar("_T")


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` and fsync it."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sibling(target: Path, kind: str) -> Path:
    # zero-padded nanoseconds sort by age as strings; the pid keeps concurrent names apart
    return target.parent / f".{target.name}.{kind}-{time.time_ns():020d}-{os.getpid()}"


def _siblings(target: Path, kind: str) -> list[Path]:
    """The ``kind`` siblings of ``target``, oldest first."""
    if not target.parent.is_dir():
        return []
    prefix = f".{target.name}.{kind}-"
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix))


def find_directory(target: Path, is_complete: Callable[[Path], bool]) -> Path | None:
    """The directory a reader should open for ``target``: ``target`` itself if it exists, else
    the newest complete copy a crash left renamed aside, else None."""
    if target.exists():
        return target
    for old in reversed(_siblings(target, _OLD)):
        if is_complete(old):
            return old
    return None


def read_consistently(target: Path, read: Callable[[], _T], attempts: int = 5) -> _T:
    """``read()``, again if it failed while a save replaced ``target``: a reader that opens
    files one by one may pair one save's ``state.json`` with another's data (or find the
    directory renamed aside). A failure with ``target`` unchanged is raised at once."""
    for attempt in range(attempts):
        before = _identity(target)
        try:
            return read()
        except Exception:
            if attempt == attempts - 1 or _identity(target) == before:
                raise
            time.sleep(0.01 * 2**attempt)
    raise AssertionError("unreachable")


def _identity(target: Path) -> tuple[int, int] | None:
    """Which directory ``target`` names now (a save swaps in another), None if none."""
    try:
        info = os.stat(target)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def _recover(target: Path, is_complete: Callable[[Path], bool]) -> None:
    """Put a copy renamed aside by an interrupted swap back in place, then drop leftovers."""
    found = find_directory(target, is_complete)
    if found is not None and found != target:
        os.rename(found, target)
        fsync_directory(target.parent, strict=True)
    for stale in _siblings(target, _TMP) + _siblings(target, _OLD):
        _remove(stale)


def _remove(path: Path) -> None:
    """Remove a leftover directory (or a link in its place), ignoring errors."""
    if path.is_symlink():
        with suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def replace_directory(
    target: Path, files: Mapping[str, bytes], is_complete: Callable[[Path], bool]
) -> None:
    """Make ``target`` a directory holding exactly ``files`` (name -> bytes, written in order),
    replacing any previous ``target`` atomically. ``is_complete(path)`` tells whether a
    directory renamed aside by an earlier crash is a whole copy worth restoring.
    Raises OSError on I/O errors before the new copy takes ``target``'s name, leaving the
    previous ``target`` in place; after that, errors (making the rename durable, removing the
    old copy) are ignored: the new copy is in place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target, is_complete)

    tmp = _sibling(target, _TMP)
    tmp.mkdir()
    try:
        for name, data in files.items():
            write_file(tmp / name, data)
        fsync_directory(tmp, strict=True)
    except Exception:  # an I/O error, not a crash: leave no debris behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    old = None
    if target.exists():
        old = _sibling(target, _OLD)
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except Exception:
        if old is not None:
            with suppress(OSError):
                os.rename(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(target.parent)
    if old is not None:
        _remove(old)  # the new copy is in place; what is left goes at the next save
