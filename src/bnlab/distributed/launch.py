"""Start N processes of a data-parallel run on this machine (what ``bnlab train --nproc N``
uses): torchrun's environment, fresh interpreters, and fail-fast supervision.

Each process gets ``RANK``/``LOCAL_RANK`` = its index, ``WORLD_SIZE`` = ``LOCAL_WORLD_SIZE`` =
N, and ``MASTER_ADDR``/``MASTER_PORT`` = 127.0.0.1 and a free port, then runs
``fn(*args)``. When one process exits with an error the others are terminated at once
(SIGTERM) and its status is returned, so one dead rank never leaves the rest waiting.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable

import torch
import torch.multiprocessing as mp

__all__ = ["free_port", "spawn_local"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _entry(local_rank: int, nproc: int, port: int, fn: Callable[..., int | None],
           args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if "OMP_NUM_THREADS" not in os.environ:
        # N processes each using every core would oversubscribe the CPU.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    status = fn(*args)
    if status:
        sys.exit(status)


def _exit_status(code: int) -> int:
    """A process's exit code as a shell status (killed by signal s: 128 + s)."""
    return 128 - code if code < 0 else code


def spawn_local(nproc: int, fn: Callable[..., int | None], args: tuple = (), *,
                grace_s: float = 5.0) -> int:
    """Run ``fn(*args)`` in ``nproc`` new processes and wait for all of them.

    ``fn`` must be importable by name (a module-level function); its return value is the
    process's exit status (None: 0). Returns 0 when every process succeeded, else the status
    of the first that failed (an exception in ``fn``: 1, its traceback on stderr). If this
    process is interrupted, the others get SIGTERM, and SIGKILL after ``grace_s`` seconds.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    context = mp.start_processes(_entry, args=(nproc, free_port(), fn, args), nprocs=nproc,
                                 join=False, start_method="spawn")
    try:
        # No grace period on failure: the others would only wait for the failed rank.
        while not context.join():
            pass
    except mp.ProcessExitedException as err:
        print(f"process {err.error_index} of {nproc} exited with status "
              f"{_exit_status(err.exit_code)}; the others were stopped", file=sys.stderr)
        return _exit_status(err.exit_code)
    except mp.ProcessRaisedException as err:
        print(f"{err}\nprocess {err.error_index} of {nproc} failed; the others were stopped",
              file=sys.stderr)
        return 1
    finally:
        _stop(context.processes, grace_s)
    return 0


def _stop(processes: list, grace_s: float) -> None:
    """Terminate what still runs (e.g. after Ctrl-C in the parent); kill it after grace_s."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
