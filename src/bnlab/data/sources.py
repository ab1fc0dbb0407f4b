"""Where the Fashion-MNIST files come from, in order, and downloading what is missing.

Lookup order: 1. an explicit ``root`` (``--data-dir``); 2. the ``BNLAB_DATA`` directory;
3. the user cache (:func:`~bnlab.data.cache.user_cache_dir`); 4. the Debian/Ubuntu package
directory ``/usr/share/datasets/fashion-mnist``; 5. a download into the cache.
``root`` and ``BNLAB_DATA`` are explicit choices and are used alone: missing files are
downloaded into them (or reported), never looked for elsewhere. Otherwise the first of the
cache and system directories holding all four files is used. A directory is only *chosen*
here; its files are verified when read, and a damaged file is an error, not a reason to look
elsewhere. An unreadable cache or system directory is passed over (and named if nothing is
found); an unreadable explicit one is an error.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .cache import user_cache_dir
from .download import DownloadConfig, download_file
from .errors import FIX_MISSING, FIX_UNREADABLE, DatasetError
from .verify import FILES, FileSpec

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "BNLAB_DATA"
# Source kinds, in lookup order ('download': fetched into the cache by this call).
KINDS = ("root", "env", "cache", "system", "download")


@dataclass(frozen=True)
class SearchPaths:
    """The candidate directories; ``None`` where no root/env directory was given (and for
    ``cache`` where there is no home directory to hold it)."""

    root: Path | None
    env: Path | None
    cache: Path | None
    system: Path

    @classmethod
    def default(cls, root: str | os.PathLike[str] | None = None) -> SearchPaths:
        """From ``root``, ``$BNLAB_DATA``, the user cache dir and :data:`SYSTEM_DIR`."""
        env = os.environ.get(ENV_VAR) or None
        if root is not None and not os.fspath(root):
            raise ValueError("root (--data-dir) is empty: name a directory, or pass None")
        return cls(
            root=_expanded(Path(root)) if root is not None else None,
            env=_expanded(Path(env)) if env else None,
            cache=user_cache_dir(),
            system=SYSTEM_DIR,
        )


def _expanded(path: Path) -> Path:
    """``path`` with ``~`` expanded; DatasetError where there is no home directory."""
    try:
        return path.expanduser()
    except RuntimeError:  # "Could not determine home directory."
        raise DatasetError(path, "a directory", "'~' cannot be expanded: there is no home "
                           "directory (HOME unset, no passwd entry)",
                           "name the directory by its absolute path") from None


@dataclass(frozen=True)
class DataLocation:
    """Where the four files were found: source ``kind`` (one of :data:`KINDS`) and paths.

    ``paths`` maps each file's name (e.g. ``'train-images-idx3-ubyte'``) to the file used
    (``.gz`` or uncompressed); ``downloaded`` names the files this call fetched; ``searched``
    lists the directories looked at, in order, as ``(kind, directory)``.
    """

    kind: str
    directory: Path
    paths: dict[str, Path]
    downloaded: tuple[str, ...] = ()
    searched: tuple[tuple[str, Path], ...] = field(default=())

    @property
    def explicit(self) -> bool:
        """Whether the user named this directory (``root``/``BNLAB_DATA``): own data allowed."""
        return self.kind in ("root", "env")

    def path(self, spec: FileSpec) -> Path:
        return self.paths[spec.name]


def find_file(directory: Path, spec: FileSpec) -> Path | None:
    """``<name>.gz`` in ``directory``, else the uncompressed ``<name>``, else None.

    Raises DatasetError when ``directory`` cannot be searched (permissions).
    """
    for name in (spec.archive, spec.name):
        candidate = directory / name
        try:  # os.stat, not Path.is_file: newer Pythons' is_file hides permission errors
            if stat.S_ISREG(os.stat(candidate).st_mode):
                return candidate
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            raise DatasetError(directory, "a readable directory",
                               f"{type(err).__name__}: {err.strerror or err}",
                               FIX_UNREADABLE) from None
    return None


def locate(
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    search: SearchPaths | None = None,
    config: DownloadConfig | None = None,
) -> DataLocation:
    """Find (and with ``download``, fetch) the four files; see the module docstring for order.

    Raises DatasetError naming the directories searched when the files are missing and
    ``download`` is false or every mirror fails.
    """
    search = search or SearchPaths.default(root)
    config = config or DownloadConfig()
    if search.root is not None:
        return _use_alone("root", search.root, download, config)
    if search.env is not None:
        return _use_alone("env", search.env, download, config)
    searched = tuple((kind, d) for kind, d in (("cache", search.cache),
                                                ("system", search.system)) if d is not None)
    found, unreadable = {}, {}
    for kind, directory in searched:
        try:
            found[kind] = _find_all(directory)
        except DatasetError as err:
            found[kind], unreadable[kind] = {}, err.found
    for kind, directory in searched:
        if len(found[kind]) == len(FILES):
            return DataLocation(kind, directory, found[kind], searched=searched)
    if not download or "cache" in unreadable or search.cache is None:
        where = ", ".join(f"{kind} {d} ({unreadable.get(kind) or f'{len(found[kind])} of 4'})"
                          for kind, d in searched)
        why = ("downloading is off" if not download
               else "nothing can be downloaded into the unreadable cache" if search.cache
               else "there is no home directory to download into (set XDG_CACHE_HOME, "
                    f"{ENV_VAR} or --data-dir)")
        raise DatasetError(
            " and ".join(str(d) for _, d in searched),
            "the four Fashion-MNIST files (e.g. train-images-idx3-ubyte.gz)",
            f"no complete set: {where}; {why}",
            FIX_MISSING if not download else FIX_UNREADABLE,
        )
    paths, fetched = _download_missing(search.cache, found["cache"], config)
    return DataLocation("download", search.cache, paths, fetched, searched)


def _find_all(directory: Path) -> dict[str, Path]:
    return {spec.name: p for spec in FILES if (p := find_file(directory, spec)) is not None}


def _use_alone(kind: str, directory: Path, download: bool, config: DownloadConfig) -> DataLocation:
    searched = ((kind, directory),)
    try:  # os.stat: Path.exists lets some errors through (EACCES above it, ENAMETOOLONG)
        mode = os.stat(directory).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as err:
        raise DatasetError(directory, "a directory that can be searched",
                           f"{type(err).__name__}: {err.strerror or err}",
                           FIX_UNREADABLE) from None
    if mode is not None and not stat.S_ISDIR(mode):
        raise DatasetError(directory, "a directory of Fashion-MNIST files", "a file", FIX_MISSING)
    paths = _find_all(directory)
    if len(paths) < len(FILES) and not download:
        missing = ", ".join(spec.archive for spec in FILES if spec.name not in paths)
        label = "--data-dir/root" if kind == "root" else f"${ENV_VAR}"
        raise DatasetError(
            directory,
            f"the four Fashion-MNIST files in this {label} directory",
            f"{len(paths)} of 4 files, {missing} missing (downloading is off)",
            FIX_MISSING,
        )
    paths, fetched = _download_missing(directory, paths, config)
    return DataLocation(kind, directory, paths, fetched, searched)


def _download_missing(
    directory: Path, present: dict[str, Path], config: DownloadConfig
) -> tuple[dict[str, Path], tuple[str, ...]]:
    paths, fetched = dict(present), []
    for spec in FILES:
        if spec.name not in paths:
            paths[spec.name] = download_file(spec, directory, config)
            fetched.append(spec.name)
    return paths, tuple(fetched)
