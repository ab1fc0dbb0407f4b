"""Downloads against a local HTTP mirror: fail-over, retries, verification, atomicity."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import time
import urllib.request

import numpy as np
import pytest

from bnlab.data import DatasetError, DownloadConfig, FileSpec, download_file, encode_idx, locate
from bnlab.data import download as download_module

LABELS = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.uint8)
RAW = encode_idx(LABELS)
SPEC = FileSpec("train-labels-idx1-ubyte", (8,), hashlib.sha256(RAW).hexdigest(), "")
GOOD = gzip.compress(RAW, mtime=0)
WRONG = gzip.compress(encode_idx(LABELS[::-1].copy()), mtime=0)  # well-formed, wrong content
PATH = "/train-labels-idx1-ubyte.gz"


def config(*mirrors: str, sleeps: list[float] | None = None, attempts: int = 3) -> DownloadConfig:
    sleep = sleeps.append if sleeps is not None else (lambda _s: None)
    return DownloadConfig(mirrors=mirrors, attempts=attempts, backoff_s=0.5, timeout_s=5,
                          progress=False, sleep=sleep)


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_bad_file_on_first_mirror_fails_over_to_the_second(mirror_server, tmp_path):
    mirror_server.serve("/a" + PATH, WRONG)
    mirror_server.serve("/b" + PATH, GOOD)
    url = mirror_server.url
    path = download_file(SPEC, tmp_path / "d", config(url + "/a/", url + "/b"))
    assert path == tmp_path / "d" / "train-labels-idx1-ubyte.gz" and path.read_bytes() == GOOD
    # a verified-bad file is a definite answer: no retry on that mirror
    assert mirror_server.requests == ["/a" + PATH, "/b" + PATH]
    assert leftovers(tmp_path / "d") == ["train-labels-idx1-ubyte.gz"]


def test_progress_bar_names_the_file_and_host(mirror_server, tmp_path, capsys):
    mirror_server.serve(PATH, GOOD)
    download_file(SPEC, tmp_path, dataclasses.replace(config(mirror_server.url), progress=True))
    assert "train-labels-idx1-ubyte.gz from 127.0.0.1" in capsys.readouterr().err


def test_not_found_fails_over_without_retrying(mirror_server, tmp_path):
    mirror_server.serve("/b" + PATH, GOOD)
    url = mirror_server.url
    download_file(SPEC, tmp_path, config(url + "/a", url + "/b"))
    assert mirror_server.requests == ["/a" + PATH, "/b" + PATH]


def test_transient_errors_are_retried_with_exponential_backoff(mirror_server, tmp_path):
    cut = (200, GOOD, 10)  # connection dropped after 10 bytes
    mirror_server.serve(PATH, 503, mirror_server.reply(*cut), GOOD)
    sleeps: list[float] = []
    path = download_file(SPEC, tmp_path, config(mirror_server.url, sleeps=sleeps, attempts=3))
    assert path.read_bytes() == GOOD
    assert mirror_server.requests == [PATH] * 3
    assert sleeps == [0.5, 1.0]  # backoff_s * 2**(k-1) before retry k


def test_every_mirror_failing_raises_one_error_and_leaves_nothing(mirror_server, tmp_path):
    mirror_server.serve("/a" + PATH, WRONG)
    mirror_server.serve("/b" + PATH, 500)
    url = mirror_server.url
    with pytest.raises(DatasetError) as info:
        download_file(SPEC, tmp_path, config(url + "/a", url + "/b", attempts=2))
    found = info.value.found
    assert f"{url}/a{PATH}: bad file" in found and f"{url}/b{PATH}: HTTP 500" in found
    assert "(2 attempts)" in found and "\n" not in str(info.value)
    assert mirror_server.requests == ["/a" + PATH, "/b" + PATH, "/b" + PATH]
    assert leftovers(tmp_path) == []


def test_truncated_transfer_never_becomes_the_file(mirror_server, tmp_path):
    mirror_server.serve(PATH, mirror_server.reply(200, GOOD, len(GOOD) // 2))
    with pytest.raises(DatasetError, match="IncompleteRead"):
        download_file(SPEC, tmp_path, config(mirror_server.url, attempts=2))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("bad", ["not a url", "http://[oops/"])  # (the second: bad IPv6)
def test_malformed_mirror_url_is_skipped(mirror_server, tmp_path, bad):
    mirror_server.serve(PATH, GOOD)
    download_file(SPEC, tmp_path, config(bad, mirror_server.url))
    assert mirror_server.requests == [PATH]


def test_crash_mid_download_leaves_no_file_and_keeps_the_old_one(monkeypatch, tmp_path):
    """An interrupt (here KeyboardInterrupt after the first chunk) aborts without a trace."""

    class DyingResponse:
        headers = {"Content-Length": str(len(GOOD))}

        def __init__(self) -> None:
            self.calls = 0

        def read(self, _n: int) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return GOOD[:10]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: DyingResponse())
    monkeypatch.setattr(download_module, "CHUNK_BYTES", 10)
    old = tmp_path / "train-labels-idx1-ubyte.gz"
    old.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        download_file(SPEC, tmp_path, config("http://mirror.invalid/"))
    assert leftovers(tmp_path) == ["train-labels-idx1-ubyte.gz"]
    assert old.read_bytes() == b"previous"


def test_locate_downloads_only_missing_files_into_the_cache(
    mirror_server, make_tiny, tmp_path, isolated, as_official
):
    served = make_tiny(tmp_path / "served")
    as_official(served.specs())
    for name in served.arrays:
        mirror_server.serve(f"/m/{name}.gz", (served.directory / f"{name}.gz").read_bytes())
    cache = isolated / "xdg" / "bnlab" / "fashion-mnist"
    make_tiny(cache)
    (cache / "t10k-images-idx3-ubyte.gz").unlink()
    (cache / "train-labels-idx1-ubyte.gz").unlink()
    location = locate(download=True, config=config(mirror_server.url + "/m/"))
    assert location.kind == "download" and location.directory == cache
    assert location.downloaded == ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte")
    assert sorted(mirror_server.requests) == ["/m/t10k-images-idx3-ubyte.gz",
                                              "/m/train-labels-idx1-ubyte.gz"]
    assert locate().kind == "cache"  # next time the cache is complete


def test_a_local_write_failure_stops_at_once_naming_the_directory(mirror_server, tmp_path,
                                                                  monkeypatch):
    import errno

    def full_disk(_path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_module, "atomic_write", full_disk)
    mirror_server.serve(PATH, GOOD)
    sleeps: list[float] = []
    with pytest.raises(DatasetError) as info:
        download_file(SPEC, tmp_path, config(mirror_server.url, mirror_server.url, sleeps=sleeps))
    # no retry, no second mirror: neither can free the disk
    assert mirror_server.requests == [PATH] and sleeps == []
    assert info.value.file == str(tmp_path) and "No space left" in info.value.found
    assert "free disk space" in info.value.fix


def test_a_content_length_that_is_not_a_number_is_ignored(mirror_server, tmp_path, monkeypatch):
    real_urlopen = urllib.request.urlopen

    def garbled(request, timeout):
        response = real_urlopen(request, timeout=timeout)
        response.headers.replace_header("Content-Length", "abc")
        return response

    monkeypatch.setattr(download_module.urllib.request, "urlopen", garbled)
    mirror_server.serve(PATH, GOOD)
    assert download_file(SPEC, tmp_path, config(mirror_server.url)).read_bytes() == GOOD


@pytest.mark.parametrize("mirror, found", [
    ("file:///nonexistent-bnlab-mirror/", "cannot fetch"),
    ("ftp2://example.invalid/", "cannot fetch (unknown url type"),
    ("/some/local/dir/", "file:///absolute/path/"),
])
def test_urls_that_cannot_work_are_not_retried(mirror, found, tmp_path):
    sleeps: list[float] = []
    with pytest.raises(DatasetError) as info:
        download_file(SPEC, tmp_path, config(mirror, sleeps=sleeps))
    assert sleeps == [] and found in info.value.found and "attempts" not in info.value.found
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kwargs", [
    {"mirrors": ()}, {"mirrors": "http://one.example/"}, {"attempts": 0}, {"attempts": True},
    {"timeout_s": 0}, {"timeout_s": float("inf")}, {"backoff_s": -1},
])
def test_download_config_refuses_what_cannot_work(kwargs):
    with pytest.raises(ValueError):
        DownloadConfig(**kwargs)


def test_a_trickling_transfer_is_a_timeout_not_a_hang(mirror_server, tmp_path):
    # One byte every 0.2 s: every socket read succeeds within the timeout, yet the file
    # would take minutes; under MIN_BYTES_PER_TIMEOUT bytes per timeout_s is a stall.
    mirror_server.serve(PATH, mirror_server.reply(200, GOOD + b"\0" * 1000, length="", trickle=0.2))
    slow = dataclasses.replace(config(mirror_server.url, attempts=1), timeout_s=1)
    with pytest.raises(DatasetError) as info:
        download_file(SPEC, tmp_path, slow)
    assert "stalled" in info.value.found and "(1 attempt)" in info.value.found
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("announced", [True, False])
def test_a_body_larger_than_any_gzip_of_the_file_is_cut_off(mirror_server, tmp_path,
                                                          announced):
    limit = download_module.max_archive_bytes(SPEC)
    huge = GOOD + b"\0" * (4 * limit)
    mirror_server.serve(PATH, mirror_server.reply(200, huge, length=None if announced else ""))
    sleeps: list[float] = []
    with pytest.raises(DatasetError) as info:
        download_file(SPEC, tmp_path, config(mirror_server.url, sleeps=sleeps))
    assert ("announces" if announced else "sent over") in info.value.found
    assert sleeps == [] and leftovers(tmp_path) == []  # refused: not retried


def test_a_negative_content_length_is_ignored(mirror_server, tmp_path):
    mirror_server.serve(PATH, mirror_server.reply(200, GOOD, length="-5"))
    assert download_file(SPEC, tmp_path, config(mirror_server.url)).read_bytes() == GOOD


def test_an_invalid_url_is_not_retried(mirror_server, tmp_path):
    sleeps: list[float] = []
    mirror_server.serve(PATH, GOOD)
    got = download_file(SPEC, tmp_path, config("http://127.0.0.1:abc/", mirror_server.url,
                                               sleeps=sleeps))
    assert got.read_bytes() == GOOD and sleeps == []


def test_a_killed_download_s_temp_file_is_removed_a_day_later(mirror_server, tmp_path):
    old, young = (tmp_path / f".{SPEC.archive}.{tag}.part"
                  for tag in ("killed", "running"))
    for part in (old, young):
        part.write_bytes(b"half a download")
    day_ago = time.time() - download_module.STALE_PART_S - 60
    os.utime(old, (day_ago, day_ago))
    mirror_server.serve(PATH, GOOD)
    download_file(SPEC, tmp_path, config(mirror_server.url))
    assert not old.exists() and young.exists()
