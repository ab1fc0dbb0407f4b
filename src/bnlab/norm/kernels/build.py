"""Compile bnlab's C++ kernels once per machine and torch build.

Each shared library is built with the system C++ compiler straight from one source file
(``cpu_kernels.cpp`` here, which includes the ``bn_*.h`` parts beside it; bnlab.models has
its own kernels): no ninja, the ops register themselves with torch's dispatcher. One small
library is also a Python module (``fast_entry.cpp``, pybind11 as torch ships it): built
with Python's headers, and optional.
Libraries go to ``$BNLAB_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/bnlab/kernels``) under a
hash of the source and the headers beside it, the torch version, the flags and the CPU
(``-march=native``), moved into place atomically so concurrent builds are safe.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
# Headers every kernel library may include (this directory is on each one's include path).
COMMON_HEADERS = [Path(__file__).with_name("autograd_node.h")]
# -fopenmp: ATen's parallel_for is an inline OpenMP region; the library then resolves
# libgomp.so.1 to the copy torch has already loaded (one OpenMP runtime per process).
# -fno-math-errno: std::sqrt may then vectorize (nothing here reads errno).
FLAGS = ["-O3", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-march=native",
         "-fno-math-errno", "-Wno-unused-parameter"]


def cache_dir() -> Path:
    if explicit := os.environ.get("BNLAB_KERNEL_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bnlab" / "kernels"


def _command(source: Path, output: Path, python: bool = False) -> list[str]:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    includes.append(f"-I{COMMON_HEADERS[0].parent}")
    libs = ["-lc10", "-ltorch_cpu", "-ltorch"]
    if python:  # a Python extension module: Python's headers, torch's Python bindings
        includes.append(f"-I{sysconfig.get_paths()['include']}")
        libs.append("-ltorch_python")
    libdirs = cpp_extension.library_paths()
    return [
        compiler, str(source), "-o", str(output), *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
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
    """Compile ``source`` unless its library is cached; returns the library's path.
    Raises RuntimeError."""
    target = library_path(source, python)
    if target.exists():
        return target
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise RuntimeError("no C++ compiler (c++ or $CXX) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        proc = subprocess.run(_command(source, Path(tmp), python), capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling {source.name} failed:\n{proc.stderr[-4000:]}")
        if verbose and proc.stderr:
            print(proc.stderr, file=sys.stderr)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


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
