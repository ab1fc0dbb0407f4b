"""Building and caching the kernel libraries, with a stand-in compiler: what is cached,
when it is rebuilt, and what a failure leaves behind."""

import os
import re
import stat
import sys
import time

import pytest

from bnlab.norm.kernels import build, cache_records

# Nothing here depends on which kernels run: once, not for each of the kernel parameters.
pytestmark = pytest.mark.parametrize("kernel", ["reference"], indirect=True)

# A "compiler" that writes a fixed library body to the -o path (or fails when told to).
FAKE_CC = """
import sys
out = sys.argv[sys.argv.index("-o") + 1]
if "FAIL" in sys.argv[1:2]:
    with open(sys.argv[0] + ".failures", "a") as log:
        log.write("1")
    sys.stderr.write("fake: error: it broke\\n")
    sys.exit(3)
with open(out, "wb") as handle:
    handle.write(b"\\x7fELF" + b"library body" * 1000)
with open(out + ".calls", "a") as log:
    log.write("1")
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    script = tmp_path / "fake_cc.py"
    script.write_text(FAKE_CC)
    monkeypatch.setenv("CXX", f"{sys.executable} {script}")
    monkeypatch.setenv("BNLAB_KERNEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_build_is_cached_with_its_digest_readable_by_all(cache):
    path = build.build()
    assert path.is_relative_to(cache) and path.read_bytes().startswith(b"\x7fELF")
    assert (path.parent / (path.name + ".sha256")).is_file()
    umask = build._umask()
    assert stat.S_IMODE(path.stat().st_mode) == 0o755 & ~umask  # not mkstemp's 0600
    body = path.read_bytes()
    assert build.build() == path and path.read_bytes() == body  # cached: not built again
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".calls")) == [
        path.name, path.name + ".sha256"]


def test_a_damaged_cached_library_is_built_again(cache):
    path = build.build()
    with open(path, "r+b") as handle:  # as a copy cut short: loading it would crash
        handle.truncate(100)
    assert build.build() == path and len(path.read_bytes()) > 100


def test_a_library_without_its_digest_is_built_again(cache):
    path = build.build()
    (path.parent / (path.name + ".sha256")).unlink()
    path.write_bytes(b"from an older bnlab")
    build.build()
    assert path.read_bytes().startswith(b"\x7fELF")


def test_a_failed_build_names_the_compiler_and_status_and_leaves_nothing(cache, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("CXX", f"{sys.executable} {tmp_path / 'fake_cc.py'} FAIL")
    with pytest.raises(RuntimeError, match=r"with .*python.* failed \(exit status 3\)"):
        build.build()
    assert [p.suffix for p in cache.iterdir()] == [".failed"]  # the record, and no debris


def test_a_missing_compiler_is_named(cache, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-bnlab --flag")
    with pytest.raises(RuntimeError, match=re.escape("no C++ compiler (no-such-compiler-bnlab")):
        build.build()


def test_temp_files_of_killed_builds_are_swept(cache):
    path = build.build()
    old = path.parent / ".build-killed.so"
    young = path.parent / ".build-running.so"
    for leftover in (old, young):
        leftover.write_bytes(b"half")
    past = time.time() - 2 * 3600
    os.utime(old, (past, past))
    (path.parent / (path.name + ".sha256")).unlink()  # forces a build, which sweeps
    build.build()
    assert not old.exists() and young.exists()  # a younger one may be a build in progress


def test_a_cache_path_with_a_tilde_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BNLAB_KERNEL_CACHE", "~/kernels")
    assert build.cache_dir() == tmp_path / "kernels"


def test_a_read_only_cache_from_before_the_digests_is_used_as_it_is(cache, monkeypatch):
    path = build.build()
    (path.parent / (path.name + ".sha256")).unlink()
    monkeypatch.setattr(build.os, "access", lambda p, mode: False)  # (root ignores modes)
    assert build.build() == path  # loaded, not rebuilt (it cannot be)
    (path.parent / (path.name + ".sha256")).write_text("0" * 64)
    with pytest.raises(RuntimeError, match="does not match .* read-only"):
        build.build()


def test_a_damaged_library_is_removed_even_when_the_rebuild_fails(cache, tmp_path,
                                                                  monkeypatch):
    path = build.build()
    with open(path, "r+b") as handle:
        handle.truncate(100)
    monkeypatch.setenv("CXX", f"{sys.executable} {tmp_path / 'fake_cc.py'} FAIL")
    with pytest.raises(RuntimeError, match="failed"):
        build.build()
    assert not path.exists()  # an older bnlab sharing the cache must not load it either


def test_a_failed_compile_is_not_repeated_by_every_process(cache, tmp_path, monkeypatch):
    script = tmp_path / "fake_cc.py"
    failing = f"{sys.executable} {script} FAIL"
    monkeypatch.setenv("CXX", failing)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="failed"):
            build.build()
    assert (tmp_path / "fake_cc.py.failures").read_text() == "1"  # compiled once, not thrice
    (record,) = cache.glob("*.failed")
    past = time.time() - cache_records.RETRY_AFTER_S - 1
    os.utime(record, (past, past))  # an hour later: tried again
    with pytest.raises(RuntimeError, match="failed"):
        build.build()
    assert (tmp_path / "fake_cc.py.failures").read_text() == "11"
    monkeypatch.setenv("CXX", f"{sys.executable} {script}")  # another compiler: tried now
    assert build.build().exists() and not record.exists()


def _aged(path, seconds):
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_build_removes_other_builds_unused_for_a_month(cache):
    name = build.library_path().name
    month = cache_records.PRUNE_AFTER_S
    stale, recent, old_unverified, other_library = (
        cache / "stale", cache / "recent", cache / "oldbnlab", cache / "other")
    for directory in (stale, recent, old_unverified, other_library):
        directory.mkdir(parents=True)
    for directory in (stale, recent):
        (directory / name).write_bytes(b"an earlier build")
        (directory / (name + ".sha256")).write_text("0" * 64)
    (old_unverified / name).write_bytes(b"from before the digests")
    (other_library / "bnlab_fast_entry.so").write_bytes(b"another library")
    _aged(stale / (name + ".sha256"), month + 60)
    _aged(old_unverified / name, month + 60)
    _aged(other_library / "bnlab_fast_entry.so", month + 60)
    old_record = cache / f"gone-{build.library_path().stem}.failed"
    old_record.write_text("c++\nold failure")
    _aged(old_record, month + 60)
    path = build.build()
    assert path.exists()
    assert not stale.exists() and not old_unverified.exists() and not old_record.exists()
    assert (recent / name).exists()  # used within the month
    assert (other_library / "bnlab_fast_entry.so").exists()  # only this library's builds


def test_loading_a_cached_library_marks_it_used_so_it_is_kept(cache):
    path = build.build()
    digest = path.parent / (path.name + ".sha256")
    _aged(digest, 2 * 86400)
    assert build.build() == path
    assert time.time() - digest.stat().st_mtime < 60  # marked (at most once a day)


def test_the_cache_follows_xdg_and_without_a_home_building_is_refused(monkeypatch, tmp_path):
    monkeypatch.delenv("BNLAB_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_dir() == tmp_path / "xdg" / "bnlab" / "kernels"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # invalid under XDG: ignored
    assert build.cache_dir() == tmp_path / ".cache" / "bnlab" / "kernels"
    monkeypatch.delenv("HOME")  # and no passwd entry: "~" stays "~" (not a dir in the cwd)
    monkeypatch.setattr(build.os.path, "expanduser", lambda p: p)
    with pytest.raises(RuntimeError, match="no home directory .* BNLAB_KERNEL_CACHE"):
        build.cache_dir()
    module, reason = build.load_ops(build.SOURCE, "bnlab_never_loaded")
    assert module is None and "no home directory" in reason
