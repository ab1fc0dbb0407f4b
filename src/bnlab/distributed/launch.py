"""Start N processes of a data-parallel run on this machine (what ``bnlab train --nproc N``
uses): torchrun's environment, fresh interpreters, and fail-fast supervision.

Each process gets ``RANK``/``LOCAL_RANK`` = its index, ``WORLD_SIZE`` = ``LOCAL_WORLD_SIZE`` =
N, and ``MASTER_ADDR``/``MASTER_PORT`` = 127.0.0.1 and a free port, then runs
``fn(*args)``. When one process exits with an error the others get ``grace_s`` seconds to
end on their own (a peer's failure breaks their collectives; rank 0 then writes what its
completed epochs leave), then SIGTERM, then SIGKILL, and its status is returned: one dead
rank never leaves the rest waiting.

Stopping this process stops them too. In them the first of SIGINT, SIGTERM and SIGHUP
stops the run as Ctrl-C does (KeyboardInterrupt: the outputs of completed epochs written)
and the later ones are ignored (a signal sent to the whole process group, e.g. by
``timeout`` or a closing terminal, arrives twice: directly and passed on), so only SIGKILL
cuts that short. A terminal's Ctrl-C reaches them with this process; SIGTERM (or SIGHUP)
here is passed on to them, once; a SIGINT sent to this process alone reaches them as
SIGTERM after ``grace_s``; SIGKILL follows ``grace_s`` later, or at once on a second Ctrl-C
here; and on Linux the kernel sends each SIGTERM if this process dies without a word
(``kill -9``). A signal ignored when this process started (SIGHUP under ``nohup``, SIGINT
for a script's ``cmd &``) stays ignored, here and in them. Signals are passed on only when
:func:`spawn_local` runs in the main thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
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


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel send this process SIGTERM when ``parent`` dies (no orphaned
    workers training on after ``kill -9`` of the launcher); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


# (getattr: Windows has no SIGHUP)
_STOPPING = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
                  if s)


def _stop_like_ctrl_c(_signum: int, _frame: object) -> None:
    """A worker's first stop signal: stop as after Ctrl-C, and ignore the ones after it."""
    for sig in _STOPPING:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def _entry(local_rank: int, nproc: int, port: int, parent: int, fn: Callable[..., int | None],
           args: tuple) -> None:
    for sig in _STOPPING:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored one stays ignored
            signal.signal(sig, _stop_like_ctrl_c)
    _die_with_parent(parent)
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if "OMP_NUM_THREADS" not in os.environ:
        # N processes each using every core would oversubscribe the CPU.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    try:
        status = fn(*args)
    except KeyboardInterrupt:  # (torch's wrapper would exit 0: a stopped run is no success)
        status = 130
    if status:
        sys.exit(status if isinstance(status, int) and 0 < status < 256 else 1)


def _exit_status(code: int) -> int:
    """A process's exit code as a shell status (killed by signal s: 128 + s)."""
    return 128 - code if code < 0 else code


def spawn_local(nproc: int, fn: Callable[..., int | None], args: tuple = (), *,
                grace_s: float = 5.0) -> int:
    """Run ``fn(*args)`` in ``nproc`` new processes and wait for all of them.

    ``fn`` must be importable by name (a module-level function); its return value is the
    process's exit status (None: 0). Returns 0 when every process succeeded, else the status
    of the first that failed (an exception in ``fn``: 1, its traceback on stderr). The others
    are stopped as the module docstring says, each step ``grace_s`` seconds apart; SIGTERM
    or SIGHUP to this process ends it with status 128 + the signal, once they are stopped.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    context = mp.start_processes(_entry, args=(nproc, free_port(), os.getpid(), fn, args),
                                 nprocs=nproc, join=False, start_method="spawn")
    previous = _pass_on_termination(context.processes)
    try:
        while not context.join(grace_period=grace_s):
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
        try:
            _stop(context.processes, grace_s)
        finally:
            _restore(previous)
    return 0


_PASSED_ON = _STOPPING[1:]  # SIGTERM, SIGHUP


def _pass_on_termination(processes: list) -> dict[int, object]:
    """Until :func:`_restore`: SIGTERM (and SIGHUP, unless ignored) here are passed on to the
    workers, then end this process's wait (SystemExit, status 128 + the signal) so that
    they are stopped."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers belong to the main thread

    def handler(signum: int, _frame: object) -> None:
        for sig in previous:  # once: a second signal must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        for process in processes:
            if process.is_alive():
                try:
                    os.kill(process.pid, signal.SIGTERM)  # their first: as Ctrl-C
                except OSError:
                    pass
        raise SystemExit(128 + signum)

    previous = {}
    for sig in _PASSED_ON:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays so
            previous[sig] = signal.signal(sig, handler)
    return previous


def _restore(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        try:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        except (TypeError, ValueError):  # a handler not installed from Python
            pass


def _stop(processes: list, grace_s: float) -> None:
    """What still runs gets ``grace_s`` to end on its own (after Ctrl-C or a signal passed
    on: writing its outputs), then SIGTERM (a worker not yet stopping takes it as Ctrl-C),
    then SIGKILL after another ``grace_s``; interrupted (a second Ctrl-C), SIGKILL at once."""
    try:
        for step in (None, "terminate", "kill"):
            deadline = time.monotonic() + grace_s
            for process in processes:
                if step is not None and process.is_alive():
                    getattr(process, step)()
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
            if not any(process.is_alive() for process in processes):
                return
    except BaseException:
        for process in processes:
            if process.is_alive():
                process.kill()
        raise
