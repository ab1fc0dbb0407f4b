"""The argparse flavour every bnlab command uses."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..device import select_device


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show every default in --help, except None (its help text says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad value is one line on stderr (no usage dump) and exit status 2,
    and --help shows defaults (subcommand parsers are of this class too)."""

    def __init__(self, *args, formatter_class=DefaultsHelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Argument types: a bad value becomes argparse's one-line error.


def _number(parse, ok, noun: str, condition: str):
    """An argparse type: ``parse`` the text, then require ``ok(value)``."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {condition}, got {text}")
        return value

    return convert


# Counts and sizes: up to 2**31 - 1, far beyond any real use and what every API takes.
MAX_COUNT = 2**31 - 1
positive_int = _number(int, lambda v: 1 <= v <= MAX_COUNT, "a positive integer",
                       f"a positive integer up to {MAX_COUNT}")
non_negative_int = _number(int, lambda v: 0 <= v <= MAX_COUNT, "an integer",
                           f"in [0, {MAX_COUNT}]")
# Decimals printed: bounded (2**31 of them for every value exhausted memory).
# Processes on one machine (--nproc): bounded, as a typo must not try to start 2**31.
MAX_LOCAL_PROCESSES = 1024
process_count = _number(int, lambda v: 1 <= v <= MAX_LOCAL_PROCESSES, "a positive integer",
                        f"in [1, {MAX_LOCAL_PROCESSES}]")
decimals_int = _number(int, lambda v: 0 <= v <= 100, "an integer", "in [0, 100]")
seed_int = _number(int, lambda v: 0 <= v < 2**63, "an integer", "in [0, 2**63)")
positive_float = _number(float, lambda v: 0 < v < math.inf, "a number", "a positive finite number")
non_negative_float = _number(float, lambda v: 0 <= v < math.inf, "a number", "finite and >= 0")


def seconds_up_to(limit: float):
    """An argparse type: a number of seconds in (0, ``limit``]."""
    return _number(float, lambda v: 0 < v <= limit, "a number of seconds", f"in (0, {limit:g}]")


def path_arg(text: str) -> Path:
    """A file system path; an empty one (which would mean the current directory) is an error."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def device_name(text: str) -> str:
    """A device name this machine has (auto, cpu, cuda[:N], mps); kept as text."""
    try:
        select_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
