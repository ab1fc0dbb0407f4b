"""Compile bnlab's C++ kernels once per machine and torch build.

Each shared library is built with the system C++ compiler straight from one source file
(``cpu_kernels.cpp`` here, which includes the ``bn_*.h`` parts beside it; bnlab.models has
its own kernels): no ninja, the ops register themselves with torch's dispatcher. One small
library is also a Python module (``fast_entry.cpp``, pybind11 as torch ships it): built
with Python's headers, and optional.
Libraries go to ``$BNLAB_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/bnlab/kernels``) under a
hash of the source and the headers beside it, the torch version, the flags and the CPU
(``-march=native``), moved into place atomically so concurrent builds are safe, each with a
``.sha256`` file beside it: a library whose bytes no longer match (a truncated copy would
crash the process when loaded, not raise) is deleted and built again. A library without the
file (an older bnlab's) is rebuilt where the cache is writable, and loaded as it is where
not. A compile that fails (or runs past ``BUILD_TIMEOUT_S``) is recorded in the cache, so
the processes after it fall back at once instead of compiling again for minutes: it is
retried after an hour, when ``$CXX`` changes, or when the record is deleted. A build also
removes the same library's other builds (older sources, torch versions, ...) that no
process has loaded for 30 days: each load marks its library as used, at most once a day
(:mod:`.cache_records`). The compiler is not part of the key: a library that was built stays
a valid build for its torch, and ``$CXX`` matters only when one must be built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

from .cache_records import (
    digest_path,
    intact,
    mark_used,
    prune,
    raise_if_failed_recently,
    record_failure,
    sweep,
)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
# Headers every kernel library may include (this directory is on each one's include path).
COMMON_HEADERS = [Path(__file__).with_name("autograd_node.h")]
# -fopenmp: ATen's parallel_for is an inline OpenMP region; the library then resolves
# libgomp.so.1 to the copy torch has already loaded (one OpenMP runtime per process).
# -fno-math-errno: std::sqrt may then vectorize (nothing here reads errno).
FLAGS = ["-O3", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-march=native",
         "-fno-math-errno", "-Wno-unused-parameter"]


def _compiler() -> list[str]:
    """``$CXX`` (a command, possibly with arguments), else ``c++``."""
    return shlex.split(os.environ.get("CXX") or "c++")


BUILD_TIMEOUT_S = 900


def cache_dir() -> Path:
    if explicit := os.environ.get("BNLAB_KERNEL_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):  # (XDG: a relative path is invalid, ignored)
        home = os.path.expanduser("~")
        if home == "~":  # HOME unset and no passwd entry: nowhere to build into
            raise RuntimeError("no home directory for the kernel cache: set "
                               "BNLAB_KERNEL_CACHE or XDG_CACHE_HOME")
        base = os.path.join(home, ".cache")
    return Path(base) / "bnlab" / "kernels"


def _command(source: Path, output: Path, python: bool = False) -> list[str]:
    from torch.utils import cpp_extension

    compiler = _compiler()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    includes.append(f"-I{COMMON_HEADERS[0].parent}")
    libs = ["-lc10", "-ltorch_cpu", "-ltorch"]
    if python:  # a Python extension module: Python's headers, torch's Python bindings
        includes.append(f"-I{sysconfig.get_paths()['include']}")
        libs.append("-ltorch_python")
    libdirs = cpp_extension.library_paths()
    return [
        *compiler, str(source), "-o", str(output), *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *includes, *[f"-L{d}" for d in libdirs], *[f"-Wl,-rpath,{d}" for d in libdirs], *libs,
    ]


def cpu_signature() -> str:
    """What ``-march=native`` compiled for: the CPU model and its instruction-set flags
    (so a cache shared between machines, e.g. an NFS home, never loads a foreign build)."""
    lines = []
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    lines.append(line.strip())
                if not line.strip() and lines:
                    break  # the first processor describes them all
    except OSError:
        pass
    return "\n".join(lines) or platform.processor() or platform.machine()


def library_path(source: Path = SOURCE, python: bool = False) -> Path:
    """Where the library for ``source``, this torch build, the flags and the CPU lives
    (``python``: a Python extension module, also keyed by the interpreter's ABI)."""
    key = hashlib.sha256()
    if python:
        key.update(f"python {sysconfig.get_config_var('EXT_SUFFIX')}".encode())
    key.update(source.read_bytes())
    # the parts it includes
    for header in sorted({*source.parent.glob("*.h"), *COMMON_HEADERS}):
        key.update(header.name.encode())
        key.update(header.read_bytes())
    key.update(torch.__version__.encode())
    key.update(" ".join(FLAGS).encode())
    key.update(sys.platform.encode())
    key.update(cpu_signature().encode())
    return cache_dir() / key.hexdigest()[:16] / f"bnlab_{source.stem}.so"


def build(source: Path = SOURCE, verbose: bool = False, python: bool = False) -> Path:
    """Compile ``source`` unless its library is cached intact; returns the library's path.
    Raises RuntimeError."""
    target = library_path(source, python)
    if intact(target):
        mark_used(target)
        return target
    digest = digest_path(target)
    if target.exists() and not os.access(target.parent, os.W_OK):
        if not digest.exists():  # a read-only cache from before the digests: as it is
            return target
        raise RuntimeError(f"{target} does not match {digest.name} and its directory is "
                           "read-only: remove it, or set BNLAB_KERNEL_CACHE elsewhere")
    failed = target.parent.with_name(f"{target.parent.name}-{target.stem}.failed")
    compiler = os.environ.get("CXX") or "c++"
    raise_if_failed_recently(failed, compiler)
    try:
        built = _rebuild(source, target, verbose, python)
        failed.unlink(missing_ok=True)
        return built
    except _CompileFailed as err:
        record_failure(failed, compiler, str(err))
        raise RuntimeError(str(err)) from None
    except OSError as err:  # the cache directory: unwritable, full, ...
        raise RuntimeError(f"cannot build into {target.parent}: {err}") from None


class _CompileFailed(RuntimeError):
    """The compiler ran and failed (or ran too long): worth remembering."""


def _rebuild(source: Path, target: Path, verbose: bool, python: bool) -> Path:
    for stale in (target, digest_path(target)):  # damaged or unverifiable: never loaded
        stale.unlink(missing_ok=True)
    compiler = _compiler()
    if not compiler or shutil.which(compiler[0]) is None:
        raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX') or 'c++'}, from $CXX "
                           "or the default) on PATH")
    fresh = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target.parent)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    built = False
    try:
        try:
            proc = subprocess.run(_command(source, Path(tmp), python), capture_output=True,
                                  text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise _CompileFailed(f"compiling {source.name} with {compiler[0]} took over "
                                 f"{BUILD_TIMEOUT_S} s; stopped") from None
        if proc.returncode != 0:
            raise _CompileFailed(f"compiling {source.name} with {compiler[0]} failed (exit "
                                 f"status {proc.returncode}):\n{proc.stderr[-4000:]}")
        if verbose and proc.stderr:
            print(proc.stderr, file=sys.stderr)
        _install(Path(tmp), target)
        built = True
        try:
            prune(target)
        except OSError:
            pass  # housekeeping only
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if fresh and not built:  # no empty directory left (rmdir: only if nobody else uses it)
            try:
                target.parent.rmdir()
            except OSError:
                pass
    return target


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _install(built: Path, target: Path) -> None:
    """Make ``built`` durable and readable by all (the linker leaves mkstemp's 0600 plus
    execute bits), record its digest, then rename it over ``target``."""
    umask = _umask()
    os.chmod(built, 0o755 & ~umask)
    data = built.read_bytes()
    with open(built, "rb+") as handle:
        os.fsync(handle.fileno())
    digest = digest_path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".sha256")
    with os.fdopen(fd, "w") as handle:
        handle.write(hashlib.sha256(data).hexdigest() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644 & ~umask)
    os.replace(tmp, digest)
    os.replace(built, target)


def load_ops(source: Path, namespace: str) -> tuple[object | None, str]:
    """Build ``source`` if needed and load it: ``(torch.ops.<namespace>, "loaded <path>")``,
    or ``(None, reason)`` on any build or load failure (callers then use another path)."""
    try:
        path = build(source)
        torch.ops.load_library(str(path))
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"
    return getattr(torch.ops, namespace), f"loaded {path}"


def load_module(source: Path) -> tuple[object | None, str]:
    """Build ``source`` as a Python extension module (its ``PYBIND11_MODULE`` name must be
    the library's file name, ``bnlab_<stem>``) and import it: ``(module, "loaded <path>")``,
    or ``(None, reason)`` on any failure (no Python headers, say)."""
    try:
        if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
            raise RuntimeError("Python's headers (Python.h) are not installed")
        path = build(source, python=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"
    return module, f"loaded {path}"
