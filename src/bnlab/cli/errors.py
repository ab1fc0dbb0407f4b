"""Errors the CLI reports as one line and exit status 2."""

from __future__ import annotations

from ..checkpoint import CheckpointError
from ..data import DatasetError
from ..distributed import DistributedSetupError
from ..experiment import RunError
from ..train import NonFiniteLossError


class CLIError(Exception):
    """A bad value or missing input, worded for the person at the terminal."""


# Library exceptions that describe the user's input, not a bug; later modules append theirs.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CLIError, DatasetError, CheckpointError, RunError, NonFiniteLossError, DistributedSetupError,
)
