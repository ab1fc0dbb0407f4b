"""Run a function on N local processes joined in a process group, never longer than a bound.

``run_ranks(fn, world_size, tmp_path)`` spawns ``world_size`` fresh interpreters, joins them
in a gloo group through a ``file://`` store under ``tmp_path`` and returns each rank's
``fn(rank, world_size, *args)``. A rank that raises fails the test with its traceback; ranks
still running after ``timeout_s`` are killed and the test fails. ``fn`` must be importable
(a module-level function of a test module or of this one).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, backend: str, store: str, out: str,
           fn: Callable[..., Any], args: tuple) -> None:
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank,
                            world_size=world_size,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        result = fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(out) / f"{rank}.pt")


def run_ranks(fn: Callable[..., Any], world_size: int, tmp_path: Path, args: tuple = (), *,
              timeout_s: float = 60.0, backend: str = "gloo") -> list[Any]:
    """Each rank's return value (tensors, numbers, strings, lists and dicts of them)."""
    tag = uuid.uuid4().hex[:8]
    store, out = tmp_path / f"store-{tag}", tmp_path / f"results-{tag}"
    out.mkdir()
    ctx = mp.start_processes(_entry, args=(world_size, backend, str(store), str(out), fn, args),
                             nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=max(0.0, deadline - time.monotonic()), grace_period=2):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{world_size} ranks still running after {timeout_s} s")
    finally:
        for process in ctx.processes:
            if process.is_alive():
                process.kill()
            process.join()
    return [torch.load(out / f"{rank}.pt", weights_only=True) for rank in range(world_size)]


def child_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a child ``python``: this checkout importable, caches under tmp_path."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    here = str(Path(__file__).resolve().parent)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("BNLAB_DATA", None)
    env["PYTHONPATH"] = os.pathsep.join([src, here, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_command(argv: list[str], env: dict[str, str], cwd: Path,
                timeout_s: float) -> subprocess.CompletedProcess:
    """Run ``argv`` in its own session; past ``timeout_s`` kill it with everything it started
    (spawned ranks included) and raise TimeoutError."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise TimeoutError(f"{argv} still running after {timeout_s} s\n{out}\n{err}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
