"""Cache of decompressed, verified IDX bytes, so a second load skips gunzip.

An entry is ``<directory>/<sha256 of the .gz file>.idx`` holding that archive's decompressed
bytes (16-byte header + uint8 array: the decoded array, in the format the hardened IDX parser
reads). Only official files are cached, and an entry is used only when its own SHA-256 still
equals the pinned checksum, so a damaged entry is rebuilt, never trusted. Entries are written
atomically; failing to write one (read-only or full disk) only costs speed.
"""

from __future__ import annotations

import os
import warnings
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from ..atomic_files import write_bytes_atomically
from .verify import FileSpec, sha256_hex


def user_cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME/bnlab/fashion-mnist``, else ``~/.cache/bnlab/fashion-mnist``; None
    where there is no home directory to put it in (``HOME`` unset and a user id without a
    passwd entry, as in containers run under an arbitrary uid)."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if os.path.isabs(base):
        root = Path(base)
    else:
        try:
            root = Path.home() / ".cache"
        except (RuntimeError, KeyError, OSError):  # "Could not determine home directory."
            return None
    return root / "bnlab" / "fashion-mnist"


@dataclass(frozen=True)
class DecodedCache:
    """Decompressed IDX bytes keyed by the SHA-256 of the compressed archive they came from."""

    directory: Path

    @classmethod
    def default(cls) -> DecodedCache | None:
        """The cache under :func:`user_cache_dir` (``.../fashion-mnist/decoded``); None where
        there is no user cache directory (loading then decompresses every time)."""
        directory = user_cache_dir()
        return None if directory is None else cls(directory / "decoded")

    def entry(self, archive_sha256: str) -> Path:
        return self.directory / f"{archive_sha256}.idx"

    def get(self, archive_sha256: str, spec: FileSpec) -> bytearray | None:
        """The cached bytes for this archive if present and still the official ``spec`` file."""
        path = self.entry(archive_sha256)
        try:
            with open(path, "rb") as handle:
                data = bytearray(spec.size + 1)  # one spare byte to notice an over-long entry
                length = handle.readinto(data)
        except OSError:
            return None
        if length != spec.size or sha256_hex(memoryview(data)[:length]) != spec.sha256:
            with suppress(OSError):
                path.unlink()  # damaged entry: drop it, the caller rebuilds it
            return None
        del data[length:]
        return data

    def put(self, archive_sha256: str, raw: bytes | bytearray) -> None:
        """Store verified decompressed bytes; warns (does not raise) when the disk refuses."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(self.entry(archive_sha256), raw)
        except OSError as err:
            warnings.warn(
                f"bnlab.data: could not write the decoded cache {self.directory} ({err}); "
                "loading still works, only slower",
                RuntimeWarning,
                stacklevel=2,
            )
