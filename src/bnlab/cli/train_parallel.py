"""``bnlab train --nproc N``: one data-parallel run in N processes on this machine.

The caller checks the settings and prepares the dataset (located, verified, decoded into
the cache) once (:func:`bnlab.experiment.preflight.check_launch`); then N processes start
with torchrun's environment, each running the same training as ``torchrun
--nproc_per_node=N -m bnlab train ...`` would. When one fails the others are stopped and
its status is the command's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..distributed import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S, spawn_local, world_info
from ..experiment import TrainConfig
from ..host import freed_memory_kept
from .errors import USER_ERRORS, CLIError
from .parser import process_count, seconds_up_to


def add_parallel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=process_count, default=1, metavar="N",
                   help="processes to train with on this machine (data parallel, one per GPU "
                        "on CUDA); --batch-size is per process, the global batch N times it")
    p.add_argument("--no-sync-bn", action="store_true",
                   help="with several processes, keep per-process BN statistics instead of "
                        "synchronizing them (bnlab.SyncBatchNorm)")
    p.add_argument("--dist-timeout", type=seconds_up_to(MAX_TIMEOUT_S),
                   default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="with several processes, fail when one waits this long for the others")


def refuse_under_torchrun() -> None:
    """CLIError where this process is already one of several (torchrun set WORLD_SIZE)."""
    if world_info().distributed:
        raise CLIError("--nproc starts the processes itself; under torchrun (WORLD_SIZE is "
                       "set) leave it out")


def launch(nproc: int, run: Callable[..., int], config: TrainConfig, *args: object) -> int:
    """Run ``run(config, *args)`` in ``nproc`` local processes; the first failure's status."""
    refuse_under_torchrun()
    return spawn_local(nproc, _worker, (run, config, *args))


def _worker(run: Callable[..., int], *args: object) -> int:
    """One process: library errors as one line and status 2, as ``bnlab`` itself does."""
    try:
        with freed_memory_kept():
            return run(*args)
    except USER_ERRORS as err:
        print(f"bnlab train: error (process {world_info().rank}): {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
