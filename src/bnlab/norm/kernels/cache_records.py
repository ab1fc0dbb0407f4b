"""The kernel cache's bookkeeping beside each library (see :mod:`.build`): its digest file
(the bytes it was built with; its mtime marks the last use), failed-build records, and the
removal of what is no longer used."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

RETRY_AFTER_S = 3600
PRUNE_AFTER_S = 30 * 86400
_MARK_EVERY_S = 86400


def digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def intact(library: Path) -> bool:
    """Whether ``library`` exists with the bytes recorded beside it when it was built."""
    try:
        recorded = digest_path(library).read_text().strip()
        return hashlib.sha256(library.read_bytes()).hexdigest() == recorded
    except OSError:
        return False


def mark_used(library: Path) -> None:
    """Record that ``library`` is in use (its digest file's mtime; best effort)."""
    digest = digest_path(library)
    try:
        if time.time() - digest.stat().st_mtime > _MARK_EVERY_S:
            os.utime(digest)
    except OSError:
        pass  # a read-only cache: never pruned by this process either


def prune(target: Path) -> None:
    """Remove other builds of ``target``'s library (same file name, another key) unused for
    ``PRUNE_AFTER_S``, their directories once empty, and old failure records. A library
    without a digest (an older bnlab's, which marks no use) counts from when it was built;
    an older bnlab still using it builds it again. (A process that loads a library unused
    for 30 days at the very moment another one prunes it may lose it, and takes its
    fallback path: one process, once in that window.)"""
    cutoff = time.time() - PRUNE_AFTER_S
    for other in target.parent.parent.glob(f"*/{target.name}"):
        if other.parent == target.parent:
            continue
        try:
            if digest_path(other).stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:  # an older bnlab's, without a digest: its own age
            if other.stat().st_mtime > cutoff:
                continue
        except OSError:
            continue
        for stale in (other, digest_path(other)):
            stale.unlink(missing_ok=True)
        try:
            other.parent.rmdir()  # only once nothing else is in it
        except OSError:
            pass
    for record in target.parent.parent.glob(f"*-{target.stem}.failed"):
        try:
            if record.stat().st_mtime < cutoff:
                record.unlink()
        except OSError:
            pass


def sweep(directory: Path, max_age_s: float = 3600.0) -> None:
    """Remove temp files of builds that were killed (none younger: a build may be running)."""
    for leftover in directory.glob(".build-*"):
        try:
            if time.time() - leftover.stat().st_mtime > max_age_s:
                leftover.unlink()
        except OSError:
            pass


def raise_if_failed_recently(record: Path, compiler: str) -> None:
    try:
        age = time.time() - record.stat().st_mtime
        recorded_compiler, _, message = record.read_text().partition("\n")
    except OSError:
        return
    if age < RETRY_AFTER_S and recorded_compiler == compiler:
        raise RuntimeError(f"{message} [failed {age / 60:.0f} min ago: retried after "
                           f"{RETRY_AFTER_S // 60} min, when $CXX changes, or once {record} "
                           "is deleted]")


def record_failure(record: Path, compiler: str, message: str) -> None:
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(f"{compiler}\n{message}")
    except OSError:
        pass  # unrecorded: the next process tries again
