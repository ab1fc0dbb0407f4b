"""Fetching the official archives from the mirrors: retries, fail-over, verification, atomic.

Each file is tried on each mirror in order; on a mirror, transient failures (connection
errors, timeouts, HTTP 5xx/429, short reads) are retried with exponential backoff, while
a definite answer (HTTP 4xx, a URL that cannot be fetched, a certificate that does not
verify, or a file that fails verification) moves on to the next mirror. The bytes stream
into a hidden temp file beside the target, are verified (gzip intact, decompressed SHA-256
equals the pinned one), fsynced, and only then renamed into place. A body larger than any
gzip of the expected file is cut off (and refused) as soon as it grows past that size; a
transfer that stalls or trickles (under ``MIN_BYTES_PER_TIMEOUT`` bytes in ``timeout_s``) is
a timeout. A failure to write locally (disk full, read-only directory) ends the download at
once: no mirror can fix it. Temp files a killed download left behind are removed by the
next download of the same file once a day old.
"""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from ..atomic_files import PART_SUFFIX, atomic_write
from .errors import FIX_MISSING, FIX_WRITABLE, DatasetError
from .idx import gunzip, parse_idx, read_file
from .verify import FileSpec, check_against_spec

# Official mirrors, tried in order: Zalando's S3 website host, then the GitHub repository.
MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
CHUNK_BYTES = 1 << 20
# A transfer slower than this many bytes per timeout_s counts as stalled (as curl's
# --speed-limit / --speed-time): a trickle must not hold a download forever.
MIN_BYTES_PER_TIMEOUT = 1024
STALE_PART_S = 86400


def max_archive_bytes(spec: FileSpec) -> int:
    """The largest a gzip of ``spec``'s file can be: stored blocks add 5 bytes per 64 KiB, the
    header and trailer tens (a file name in the header more); generous beyond that."""
    return spec.size + spec.size // 100 + 65536


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

    def __post_init__(self) -> None:
        if not self.mirrors or isinstance(self.mirrors, str):
            raise ValueError(f"mirrors must be a non-empty tuple of URLs, got {self.mirrors!r}")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) \
                or self.attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {self.attempts!r}")
        if not 0 < self.timeout_s < float("inf") or not self.backoff_s >= 0:
            raise ValueError(f"timeout_s must be positive and finite and backoff_s >= 0, got "
                             f"{self.timeout_s!r} and {self.backoff_s!r}")


class _MirrorRefused(Exception):
    """This mirror will not serve a good copy (4xx, a redirect loop, a bad file, a URL that
    cannot be fetched at all): go to the next mirror."""


class _ReadFailed(Exception):
    """Reading from the connection failed (``error``, transient): retried on this mirror."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _LocalWriteFailed(Exception):
    """Writing the download beside the target failed: no mirror can help."""


def download_file(spec: FileSpec, directory: Path, config: DownloadConfig) -> Path:
    """Download ``spec``'s archive into ``directory`` (created if needed); return its path.

    Raises DatasetError listing every mirror's failure when none yields a verified file.
    """
    target = Path(directory) / spec.archive
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(target.parent, "a writable directory", str(err), FIX_WRITABLE) from None
    # (A failed download leaves the directory it made: removing it again could pull it
    # from under another process downloading into it.)
    _remove_stale_parts(target)
    return _from_mirrors(spec, target, config)


def _remove_stale_parts(target: Path) -> None:
    """Remove temp files of downloads of ``target`` that were killed (a day old: a younger
    one may be another process's download in progress)."""
    for part in target.parent.glob(f".{target.name}.*{PART_SUFFIX}"):
        try:
            if time.time() - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
        except OSError:
            pass


def _from_mirrors(spec: FileSpec, target: Path, config: DownloadConfig) -> Path:
    failures: list[str] = []
    for mirror in config.mirrors:
        url = mirror.rstrip("/") + "/" + spec.archive
        for attempt in range(1, config.attempts + 1):
            if attempt > 1:
                config.sleep(config.backoff_s * 2 ** (attempt - 2))
            try:
                _fetch_verified(url, spec, target, config)
                return target
            except _LocalWriteFailed as err:
                raise DatasetError(target.parent, "a writable directory with room for "
                                   f"{spec.archive}", str(err), FIX_WRITABLE) from None
            except (_MirrorRefused, ValueError) as err:  # ValueError: a malformed mirror URL
                failures.append(f"{url}: {err}{_url_hint(url)}")
                break
            except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
                if attempt == config.attempts:
                    tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                    failures.append(f"{url}: {_describe(err)} ({tries})")
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
        if (300 <= err.code < 500) and err.code != 429:  # 3xx here: a redirect loop
            raise _MirrorRefused(f"HTTP {err.code} {err.reason}") from None
        raise
    except urllib.error.URLError as err:
        if _definite(err.reason):
            raise _MirrorRefused(f"cannot fetch ({err.reason})") from None
        raise
    except http.client.InvalidURL as err:  # a bad port, a space in the host: never works
        raise _MirrorRefused(f"cannot fetch (invalid URL: {err})") from None
    with response:
        total = _content_length(response)
        if total is not None and total > max_archive_bytes(spec):
            raise _MirrorRefused(f"announces {total} bytes, more than a gzip of the "
                                 f"{spec.size}-byte file can be")
        try:
            with atomic_write(target) as out:
                received = _stream(response, out, total, spec, url, config.progress,
                                   config.timeout_s)
                if total is not None and received != total:
                    raise http.client.IncompleteRead(b"", total - received)
                out.flush()
                _verify(Path(out.name), spec, url)
        except _ReadFailed as err:
            raise err.error from None
        except OSError as err:  # the temp file: creating, writing, reading back, renaming
            raise _LocalWriteFailed(f"{type(err).__name__}: {err}") from None


def _stream(response, out, total: int | None, spec: FileSpec, url: str, progress: bool,
            timeout_s: float) -> int:
    """Copy the response body into ``out``; return the bytes received. A failed read, or a
    transfer under ``MIN_BYTES_PER_TIMEOUT`` bytes per ``timeout_s``, raises _ReadFailed
    (the caller tells it apart from a failed local write); a body past
    :func:`max_archive_bytes` raises _MirrorRefused."""
    host = urlsplit(url).hostname or url
    limit = max_archive_bytes(spec)
    # read1: whatever arrived, after at most one read of the socket (read(n) would wait
    # for all n bytes, however slowly they come)
    read = getattr(response, "read1", response.read)
    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
        desc=f"{spec.archive} from {host}", disable=not progress,
    ) as bar:
        received = window_bytes = 0
        window_start = time.monotonic()
        while True:
            try:
                chunk = read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as err:
                raise _ReadFailed(err) from None
            if not chunk:
                return received
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
            if received > limit:
                raise _MirrorRefused(f"sent over {limit} bytes, more than a gzip of the "
                                     f"{spec.size}-byte file can be")
            window_bytes += len(chunk)
            if (elapsed := time.monotonic() - window_start) >= timeout_s:
                if window_bytes < MIN_BYTES_PER_TIMEOUT:
                    raise _ReadFailed(TimeoutError(
                        f"stalled: {window_bytes} bytes in the last {elapsed:.0f} s"))
                window_start, window_bytes = time.monotonic(), 0


def _verify(path: Path, spec: FileSpec, url: str) -> None:
    """The complete temp file, before it may take the target's name; _MirrorRefused if bad."""
    try:
        raw = gunzip(read_file(path), url, max_size=spec.size)
        parse_idx(raw, url)
        check_against_spec(raw, spec, url, allow_custom=False)
    except DatasetError as err:
        raise _MirrorRefused(f"bad file: expected {err.expected}, found {err.found}") from None


def _content_length(response) -> int | None:
    """The announced body size, or None where absent, not a number or negative (as Python's
    HTTP client itself ignores it)."""
    try:
        length = int(response.headers.get("Content-Length") or 0)
    except ValueError:
        return None
    return length if length > 0 else None


def _definite(reason: object) -> bool:
    """Whether a URLError's reason is final rather than a network failure worth retrying:
    an unsupported scheme (a string reason), a file:// path that is absent or unreadable, or
    a server certificate that does not verify."""
    return not isinstance(reason, OSError) or isinstance(
        reason, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                 ssl.SSLCertVerificationError))


def _url_hint(url: str) -> str:
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # (what the fetch failed on: already in the message)
        return ""
    if not scheme:
        return " (not a URL: a local directory is a mirror as file:///absolute/path/)"
    return ""


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"unreachable ({err.reason})"
    return f"{type(err).__name__}: {err}"
