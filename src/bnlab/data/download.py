"""Fetching the official archives from the mirrors: retries, fail-over, verification, atomic.

Each file is tried on each mirror in order; on a mirror, transient failures (connection
errors, timeouts, HTTP 5xx/429, short reads) are retried with exponential backoff, while
a definite answer (HTTP 4xx, or a file that fails verification) moves on to the next mirror.
The bytes stream into a hidden temp file beside the target, are verified (gzip intact,
decompressed SHA-256 equals the pinned one), fsynced, and only then renamed into place.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from ..atomic_files import atomic_write
from .errors import FIX_MISSING, DatasetError
from .idx import gunzip, parse_idx, read_file
from .verify import FileSpec, check_against_spec

# Official mirrors, tried in order: Zalando's S3 website host, then the GitHub repository.
MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class DownloadConfig:
    """How to download: mirror base URLs (tried in order), attempts per mirror, backoff.

    The wait before retry ``k`` (1-based) on a mirror is ``backoff_s * 2**(k-1)``, spent by
    ``sleep`` (injectable so tests need not wait). ``timeout_s`` bounds each connect and read.
    """

    mirrors: tuple[str, ...] = MIRRORS
    attempts: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 30.0
    progress: bool = True
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)


class _MirrorRefused(Exception):
    """This mirror will not serve a good copy (4xx or a bad file): go to the next mirror."""


def download_file(spec: FileSpec, directory: Path, config: DownloadConfig) -> Path:
    """Download ``spec``'s archive into ``directory`` (created if needed); return its path.

    Raises DatasetError listing every mirror's failure when none yields a verified file.
    """
    target = Path(directory) / spec.archive
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(target.parent, "a writable directory", str(err)) from None
    failures: list[str] = []
    for mirror in config.mirrors:
        url = mirror.rstrip("/") + "/" + spec.archive
        for attempt in range(1, config.attempts + 1):
            if attempt > 1:
                config.sleep(config.backoff_s * 2 ** (attempt - 2))
            try:
                _fetch_verified(url, spec, target, config)
                return target
            except (_MirrorRefused, ValueError) as err:  # ValueError: a malformed mirror URL
                failures.append(f"{url}: {err}")
                break
            except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
                if attempt == config.attempts:
                    failures.append(f"{url}: {_describe(err)} ({attempt} attempts)")
    raise DatasetError(
        target,
        f"a verified download of {spec.archive} from a mirror",
        "; ".join(failures) or "no mirrors configured",
        FIX_MISSING,
    )


def _fetch_verified(url: str, spec: FileSpec, target: Path, config: DownloadConfig) -> None:
    """One attempt: stream ``url`` into a temp file, verify it, rename it to ``target``."""
    request = urllib.request.Request(url, headers={"User-Agent": "bnlab"})
    try:
        response = urllib.request.urlopen(request, timeout=config.timeout_s)
    except urllib.error.HTTPError as err:
        if 400 <= err.code < 500 and err.code != 429:
            raise _MirrorRefused(f"HTTP {err.code} {err.reason}") from None
        raise
    with response, atomic_write(target) as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        host = urlsplit(url).hostname or url
        with tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
            desc=f"{spec.archive} from {host}", disable=not config.progress,
        ) as bar:
            received = 0
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received != total:
            raise http.client.IncompleteRead(b"", total - received)
        out.flush()
        try:  # verify the complete temp file before it may take the target's name
            raw = gunzip(read_file(Path(out.name)), url, max_size=spec.size)
            parse_idx(raw, url)
            check_against_spec(raw, spec, url, allow_custom=False)
        except DatasetError as err:
            raise _MirrorRefused(f"bad file: expected {err.expected}, found {err.found}") from None


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"unreachable ({err.reason})"
    return f"{type(err).__name__}: {err}"
