"""``bnlab data info`` and ``bnlab data download``: where Fashion-MNIST is, and fetching it."""

from __future__ import annotations

import argparse

from .. import data
from .errors import CLIError
from .parser import path_arg, seconds_up_to

MAX_TIMEOUT_S = 3600.0  # one hour per connect/read; beyond it a socket rejects the value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="Fashion-MNIST: where the files are (info) and fetching them (download)",
        description="Find, verify and download the Fashion-MNIST files. Lookup order: "
        "--data-dir, $BNLAB_DATA, the user cache, /usr/share/datasets/fashion-mnist, download.",
    )
    actions = p.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    info = actions.add_parser(
        "info",
        help="show where the files were found and whether each one verifies",
    )
    _add_data_dir(info)
    info.set_defaults(handler=run_info)
    fetch = actions.add_parser(
        "download",
        help="download any missing files (into --data-dir, else $BNLAB_DATA, else the user "
             "cache) and verify them",
    )
    _add_data_dir(fetch)
    fetch.add_argument(
        "--mirror", action="append", metavar="URL",
        help="base URL to fetch from, tried in the order given (repeatable); "
        "default: Zalando's S3 host, then GitHub",
    )
    fetch.add_argument("--attempts", type=int, default=3, help="tries per mirror")
    fetch.add_argument("--timeout", type=seconds_up_to(MAX_TIMEOUT_S), default=30.0,
                       help="seconds per connect/read")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(handler=run_download)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=path_arg, default=None, metavar="DIR",
        help="use this directory alone (overrides $BNLAB_DATA and the default locations)",
    )


def run_info(args: argparse.Namespace) -> int:
    location = data.locate(args.data_dir, download=False)
    return 1 if _report(location) else 0


def run_download(args: argparse.Namespace) -> int:
    if args.attempts < 1:
        raise CLIError(f"--attempts must be at least 1, got {args.attempts}")
    config = data.DownloadConfig(
        mirrors=tuple(args.mirror) if args.mirror else data.MIRRORS,
        attempts=args.attempts,
        timeout_s=args.timeout,
        progress=not args.quiet,
    )
    location = data.locate(args.data_dir, download=True, config=config)
    errors = _report(location)
    if errors:
        raise errors[0]
    return 0


def _report(location: data.DataLocation) -> list[data.DatasetError]:
    """Print the source and a line per file; return the files' errors (none when all verify)."""
    print(f"source: {location.kind} ({location.directory})")
    print("searched: " + ", ".join(f"{kind} {d}" for kind, d in location.searched))
    if location.downloaded:
        print("downloaded: " + ", ".join(location.downloaded))
    cache = data.DecodedCache.default()
    print(f"decoded cache: {'none (no home directory)' if cache is None else cache.directory}")
    errors = []
    for check in data.check_files(location, cache):
        if check.error is not None:
            errors.append(check.error)
            state = f"DAMAGED: {check.error}"
        elif check.status == "official":
            state = "verified (SHA-256 of the official file)"
        else:
            state = "custom (well-formed, not the official file; checksum not applicable)"
        print(f"  {check.spec.name:<24} {check.path}  {state}")
    return errors
