"""``bnlab`` entry point: an argparse parser whose subcommands live in sibling modules.

Each subcommand module has ``register(subparsers)``, which adds its parser and sets
``handler`` (a function of the parsed namespace returning an exit status). Handlers turn
the namespace into the library's config dataclasses; nothing below the CLI sees argparse.
Expected failures raise :class:`CLIError` (or a library error listed in
``USER_ERRORS``): one line on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..host import freed_memory_kept
from ..norm.fused import requested_kernel
from . import checkpoint_cmd, data_cmd, selfcheck, train_cmd
from .errors import USER_ERRORS, CLIError
from .parser import Parser

SUBCOMMANDS = [train_cmd, checkpoint_cmd, data_cmd, selfcheck]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bnlab",
        description="Batch normalization from first principles: train, compare, inspect.",
    )
    parser.add_argument("--version", action="version", version=f"bnlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:  # (also after argparse's --help, which exits)
            sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except BrokenPipeError:
        # Whoever read our output stopped (``bnlab ... | head``): stop quietly, as Unix tools
        # do on SIGPIPE. stdout goes to devnull so the interpreter's final flush cannot
        # fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # killed by SIGPIPE, as a shell reports it


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        _check_environment()
        with freed_memory_kept():  # see bnlab.host
            return int(args.handler(args) or 0)
    except USER_ERRORS as err:
        print(f"bnlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bnlab {args.command}: interrupted", file=sys.stderr)
        return 130


def _check_environment() -> None:
    """Settings read from the environment deep inside a run, checked before it starts."""
    try:
        requested_kernel(None)
    except ValueError as err:
        raise CLIError(str(err)) from None
