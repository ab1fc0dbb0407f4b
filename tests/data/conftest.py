"""Fixtures for the data tests: an isolated environment, tiny IDX datasets, a local mirror.

Every test runs with the cache, home, ``BNLAB_DATA`` and the system directory redirected into
its own temp dir, and with downloads pointed at a closed local port: no test touches the
real cache or the network.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from bnlab.data import DownloadConfig, FileSpec, encode_idx, read, sources
from bnlab.data.verify import SplitSpec

DEAD_MIRROR = "http://127.0.0.1:9/"  # the discard port: connection refused, instantly


def no_sleep(_seconds: float) -> None:
    pass


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BNLAB_DATA", raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "system")
    offline = DownloadConfig(mirrors=(DEAD_MIRROR,), attempts=2, sleep=no_sleep, progress=False)
    monkeypatch.setattr(sources, "DownloadConfig", lambda: offline)
    return tmp_path


@dataclass
class TinySet:
    """A tiny Fashion-MNIST-shaped dataset written as four IDX files."""

    directory: Path
    arrays: dict[str, np.ndarray]  # file name (no .gz) -> array written
    raw: dict[str, bytes] = field(default_factory=dict)  # file name -> uncompressed IDX bytes

    def specs(self) -> tuple[FileSpec, ...]:
        """FileSpecs that these files match (as if they were the official ones)."""
        return tuple(
            FileSpec(name, a.shape, hashlib.sha256(self.raw[name]).hexdigest(),
                     hashlib.md5(self.raw[name]).hexdigest())
            for name, a in self.arrays.items()
        )


def tiny_arrays(n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx(path: Path, raw: bytes) -> Path:
    """Write uncompressed IDX bytes, gzipped when ``path`` ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)
    return path


@pytest.fixture
def make_tiny() -> Callable[..., TinySet]:
    """``make_tiny(directory, n_train=12, n_test=7, gz=True, seed=0)`` writes a TinySet."""

    def make(directory: Path, n_train: int = 12, n_test: int = 7, gz: bool = True,
             seed: int = 0) -> TinySet:
        tiny = TinySet(Path(directory), tiny_arrays(n_train, n_test, seed))
        for name, array in tiny.arrays.items():
            tiny.raw[name] = encode_idx(array)
            write_idx(tiny.directory / (name + ".gz" if gz else name), tiny.raw[name])
        return tiny

    return make


@pytest.fixture
def as_official(monkeypatch: pytest.MonkeyPatch) -> Callable[[tuple[FileSpec, ...]], None]:
    """``as_official(specs)`` makes ``specs`` the pinned files for locate/read/check."""

    def pin(specs: tuple[FileSpec, ...]) -> None:
        train, test = SplitSpec(specs[0], specs[1]), SplitSpec(specs[2], specs[3])
        monkeypatch.setattr(sources, "FILES", specs)
        monkeypatch.setattr(read, "TRAIN", train)
        monkeypatch.setattr(read, "TEST", test)

    return pin


@dataclass
class Reply:
    """One scripted HTTP answer: status, body, and how many body bytes to actually send."""

    status: int = 200
    body: bytes = b""
    send: int | None = None  # None: all of it; else cut the connection after this many
    length: str | None = None  # the Content-Length header: None for the body's, "" for none
    trickle: float = 0.0  # seconds between bytes (0: all at once)


class MirrorServer:
    """A local HTTP server whose paths answer from scripted replies (the last one repeats)."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                replies = server.routes.get(self.path) or [Reply(404, b"not found")]
                reply = replies.pop(0) if len(replies) > 1 else replies[0]
                self.send_response(reply.status)
                length = str(len(reply.body)) if reply.length is None else reply.length
                if length:
                    self.send_header("Content-Length", length)
                self.end_headers()
                body = reply.body[: reply.send]
                if not reply.trickle:
                    self.wfile.write(body)
                    return
                try:
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(reply.trickle)
                except OSError:
                    pass  # the client gave up

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.watchdog = threading.Timer(60, self.httpd.shutdown)  # never outlive a stuck test

    def serve(self, path: str, *replies: Reply | bytes | int) -> None:
        """Script ``path``: each reply is a Reply, a body (status 200) or a bare status."""
        self.routes[path] = [
            r if isinstance(r, Reply) else Reply(body=r) if isinstance(r, bytes) else Reply(r)
            for r in replies
        ]

    @staticmethod
    def reply(status: int, body: bytes, send: int | None = None, **options: object) -> Reply:
        """A reply that sends only ``send`` bytes of ``body`` (then drops the connection);
        ``options``: :class:`Reply`'s ``length`` and ``trickle``."""
        return Reply(status, body, send, **options)

    def __enter__(self) -> MirrorServer:
        self.thread.start()
        self.watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watchdog.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def mirror_server() -> Iterator[MirrorServer]:
    with MirrorServer() as server:
        yield server
