"""The one exception the checkpoint package raises for bad or unreadable checkpoints."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DAMAGED", "CheckpointError"]

DAMAGED = "the checkpoint is damaged: use an earlier one or train again"


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read, as one line: the path, what is wrong and
    what to do. ``CheckpointError(path, problem, hint)`` or ``CheckpointError(message)``."""

    def __init__(self, where: str | Path, problem: str | None = None, hint: str | None = None):
        message = str(where) if problem is None else f"{where}: {problem}"
        if hint:
            message += f"; {hint}"
        # the CLI prints it as a single line: fold any newline an inner error brought along
        super().__init__(" ".join(message.split()))
        self.path = Path(where) if problem is not None else None
