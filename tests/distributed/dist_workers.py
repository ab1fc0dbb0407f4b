"""Functions the CLI-level tests run inside spawned ranks (importable by name there)."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from bnlab.cli import main
from bnlab.distributed import world_info
from bnlab.train.loop import _EpochRunner


def faulty_train(fault: str, marker: str, argv: list[str]) -> int:
    """``bnlab train *argv`` in this rank; rank 1 dies (``fault="die"``: ``os._exit(3)``) or
    hangs (``"hang"``) when about to take its second training step, after creating the file
    ``marker`` (so a test knows the fault came mid-training, not at start-up)."""
    if world_info().rank == 1:
        original = _EpochRunner._step
        calls = itertools.count()

        def step(self, batch, totals):
            if next(calls) == 1:
                Path(marker).touch()
                if fault == "die":
                    os._exit(3)
                time.sleep(600)
            return original(self, batch, totals)

        _EpochRunner._step = step
    return main(["train", *argv])


def wait_to_be_stopped(directory: str) -> int:
    """Record this rank's pid, then sleep until interrupted; on SIGINT record that it
    stopped on its own (as a run writes its outputs after Ctrl-C) and return 130."""
    rank = world_info().rank
    Path(directory, f"pid-{rank}").write_text(str(os.getpid()))
    try:
        time.sleep(600)
    except KeyboardInterrupt:
        time.sleep(0.5)  # its outputs take a moment: not cut short
        Path(directory, f"stopped-{rank}").touch()
        return 130
    return 0


def rank_one_fails(directory: str) -> int:
    """Rank 1 fails at once; rank 0 takes 1.5 s more to finish (its outputs), then ends."""
    if world_info().rank == 1:
        return 3
    time.sleep(1.5)
    Path(directory, "rank-0-finished").touch()
    return 0


def sleep_forever(directory: str) -> int:
    """Record this rank's pid and sleep, catching nothing."""
    Path(directory, f"pid-{world_info().rank}").write_text(str(os.getpid()))
    time.sleep(600)
    return 0
