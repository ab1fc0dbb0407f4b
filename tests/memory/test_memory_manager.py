"""GPUMemoryManager on the CPU (process RSS), its fallbacks, and dispatch to faked CUDA/MPS."""

import gc
import os
import re
import sys
import weakref
from pathlib import Path

import pytest
import torch

from bnlab.memory import GPUMemoryManager, MemoryReport, backends, format_bytes

MiB = 2**20
on_linux = pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")


def filled(nbytes: int) -> torch.Tensor:
    """A float32 tensor of ``nbytes`` whose pages are all touched (so they count in RSS)."""
    return torch.ones(nbytes // 4)


def close_to(measured: int, expected: int) -> bool:
    """RSS moves in pages (and huge pages) and the interpreter allocates a little on the side."""
    return abs(measured - expected) <= 0.1 * expected + 4 * MiB


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (MiB - 1, "1.0 MiB"),  # not "1024.0 KiB"
        (int(12.3 * MiB), "12.3 MiB"),
        (3 * 2**30, "3.0 GiB"),
        (5 * 2**40, "5.0 TiB"),
        (-1536, "-1.5 KiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@on_linux
def test_current_is_the_process_rss():
    mm = GPUMemoryManager("cpu")
    # independent reader: /proc/self/statm counts resident pages
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    assert close_to(mm.current(), pages * os.sysconf("SC_PAGE_SIZE"))


@on_linux
def test_allocation_raises_current_and_peak_by_its_size():
    mm = GPUMemoryManager("cpu")
    mm.cleanup()
    mm.reset_peak()
    before = mm.current()
    x = filled(64 * MiB)
    assert close_to(mm.current() - before, 64 * MiB)
    del x
    assert close_to(mm.current(), before)  # freed large blocks go back to the OS
    assert close_to(mm.peak() - before, 64 * MiB)


def _peak_after_reset(mm: GPUMemoryManager, nbytes: int, sample: bool) -> int:
    mm.reset_peak()
    start = mm.current()
    x = filled(nbytes)
    if sample:
        mm.current()
    del x
    return mm.peak() - start


@on_linux
def test_reset_peak_then_smaller_allocation_gives_smaller_peak():
    mm = GPUMemoryManager("cpu")
    big = _peak_after_reset(mm, 96 * MiB, sample=False)
    # Both above glibc's largest dynamic mmap threshold (32 MiB), so each is fresh pages
    # whatever earlier tests left in the heap.
    small = _peak_after_reset(mm, 40 * MiB, sample=False)
    assert close_to(big, 96 * MiB)
    assert close_to(small, 40 * MiB)


@on_linux
def test_peak_without_clear_refs_falls_back_to_samples(monkeypatch):
    monkeypatch.setattr(backends, "_clear_hwm", lambda: False)
    mm = GPUMemoryManager("cpu")
    # the kernel's high-water mark cannot be reset, so a block below it is seen by sampling
    x = filled(96 * MiB)
    del x
    assert close_to(_peak_after_reset(mm, 32 * MiB, sample=True), 32 * MiB)
    assert _peak_after_reset(mm, 32 * MiB, sample=False) < 8 * MiB  # unsampled: a lower bound


@on_linux
def test_peak_without_clear_refs_uses_a_risen_high_water_mark(monkeypatch):
    monkeypatch.setattr(backends, "_clear_hwm", lambda: False)
    mm = GPUMemoryManager("cpu")
    mm.reset_peak()
    start = mm.current()
    above = backends._read_proc_status("VmHWM") - start + 32 * MiB
    if above > 512 * MiB:
        pytest.skip("process high-water mark too far above the current RSS")
    x = filled(above)
    del x
    assert close_to(mm.peak() - start, above)  # no sample inside: the OS counter rose


def test_non_linux_reads_getrusage(monkeypatch):
    monkeypatch.setattr(backends, "_read_proc_status", lambda field: None)
    monkeypatch.setattr(backends, "_clear_hwm", lambda: False)
    maxrss = {"kib": 1000}

    class Usage:
        @property
        def ru_maxrss(self):
            return maxrss["kib"]

    import resource

    monkeypatch.setattr(resource, "getrusage", lambda who: Usage())
    monkeypatch.setattr(sys, "platform", "linux")
    mm = GPUMemoryManager("cpu")
    assert mm.current() == 1000 * 1024 and mm.peak() == 1000 * 1024  # KiB on Linux
    monkeypatch.setattr(sys, "platform", "darwin")
    assert mm.current() == 1000  # bytes on macOS
    mm.reset_peak()
    maxrss["kib"] = 5000
    assert mm.peak() == 5000
    # what "current" is without /proc is said, not passed off as the RSS now
    assert "largest RSS so far: no /proc" in mm.summary()


@on_linux
def test_track_reports_the_peak_inside_the_block():
    mm = GPUMemoryManager("cpu")
    with mm.track() as report:
        x = filled(48 * MiB)
        del x
    assert isinstance(report, MemoryReport)
    assert report.device == torch.device("cpu")
    assert close_to(report.peak_delta, 48 * MiB)
    assert close_to(report.end, report.start)
    assert report.delta == report.end - report.start
    assert "peak" in str(report) and "MiB" in str(report)


@on_linux
def test_track_keeps_the_managers_outer_peak():
    mm = GPUMemoryManager("cpu")
    mm.reset_peak()
    start = mm.current()
    x = filled(96 * MiB)
    del x
    with mm.track() as report:
        y = filled(40 * MiB)  # above the largest dynamic mmap threshold: fresh pages
        del y
    assert close_to(report.peak_delta, 40 * MiB)
    assert close_to(mm.peak() - start, 96 * MiB)  # the block's reset did not lose it


@on_linux
@pytest.mark.parametrize("inner_device", ["cpu", "cpu:0"])  # one device, however spelled
def test_an_outer_block_keeps_peaks_that_other_managers_resets_took(inner_device):
    outer_manager, inner_manager = GPUMemoryManager("cpu"), GPUMemoryManager(inner_device)
    with outer_manager.track() as outer:
        x = filled(96 * MiB)
        del x
        for _ in range(2):  # as train_classify resets its own manager's peak every epoch
            inner_manager.reset_peak()
            with inner_manager.track() as inner:
                # above glibc's largest dynamic mmap threshold (32 MiB): fresh pages, not
                # reused heap (an 8 MiB block here measured 0 after other tests' frees)
                y = filled(40 * MiB)
                del y
    assert close_to(inner.peak_delta, 40 * MiB)
    assert close_to(outer.peak_delta, 96 * MiB)
    assert close_to(outer_manager.peak() - outer.start, 96 * MiB)


def test_summary_names_device_and_numbers():
    mm = GPUMemoryManager("cpu")
    text = mm.summary()
    lines = text.splitlines()
    assert len(lines) >= 4
    assert lines[0].split() == ["device:", "cpu"]
    size = r"\d+(\.\d)? (B|KiB|MiB|GiB|TiB)"
    for field in ("current", "peak", "total"):
        assert any(re.match(rf"{field}:\s+{size}", line) for line in lines), text
    assert repr(mm) == "GPUMemoryManager(device='cpu')"


def test_cleanup_collects_reference_cycles():
    class Node:
        pass

    mm = GPUMemoryManager("cpu")
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        node = Node()
        node.self = node
        ref = weakref.ref(node)
        del node
        assert ref() is not None  # a cycle survives until the collector runs
        mm.cleanup()
        assert ref() is None
    finally:
        if was_enabled:
            gc.enable()


def test_context_manager_cleans_up_on_exit(monkeypatch):
    calls = []
    monkeypatch.setattr(GPUMemoryManager, "cleanup", lambda self: calls.append(self))
    with GPUMemoryManager("cpu") as mm:
        assert isinstance(mm, GPUMemoryManager) and calls == []
    assert calls == [mm]
    with pytest.raises(KeyError), GPUMemoryManager("cpu"):
        raise KeyError
    assert len(calls) == 2


def test_unavailable_device_raises(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        GPUMemoryManager("cuda")


class FakeCuda:
    def __init__(self):
        self.calls = []
        self.allocated, self.max_allocated = 1000, 5000

    def install(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: 2)
        monkeypatch.setattr(cuda, "current_device", lambda: 0)
        monkeypatch.setattr(cuda, "memory_allocated", self.record("allocated", self.allocated))
        monkeypatch.setattr(cuda, "max_memory_allocated", self.record("max", self.max_allocated))
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", self.record("reset", None))
        monkeypatch.setattr(cuda, "empty_cache", self.record("empty_cache", None))
        monkeypatch.setattr(cuda, "mem_get_info", self.record("mem_get_info", (3 * MiB, 8 * MiB)))
        monkeypatch.setattr(cuda, "get_device_name", self.record("name", "Fake GPU"))

    def record(self, name, result):
        def call(*args):
            self.calls.append((name, *args))
            return result

        return call


def test_cuda_calls_are_routed_to_the_cuda_api(monkeypatch):
    fake = FakeCuda()
    fake.install(monkeypatch)
    monkeypatch.setattr(gc, "collect", fake.record("gc", 0))
    assert GPUMemoryManager().device == torch.device("cuda")
    mm = GPUMemoryManager("cuda:1")
    dev = torch.device("cuda", 1)
    assert mm.current() == 1000 and fake.calls[-1] == ("allocated", dev)
    assert mm.peak() == 5000 and fake.calls[-1] == ("max", dev)
    mm.reset_peak()
    assert fake.calls[-1] == ("reset", dev)
    fake.calls.clear()
    mm.cleanup()
    assert fake.calls == [("gc",), ("empty_cache",)]
    text = mm.summary()
    assert "cuda:1 (Fake GPU)" in text and "8.0 MiB" in text and "3.0 MiB" in text
    with mm.track() as report:
        pass
    assert (report.start, report.end, report.peak) == (1000, 1000, 5000)


def test_mps_peak_is_sampled_and_bounded_by_the_driver_pool(monkeypatch):
    now = {"allocated": 0, "driver": 0}
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: now["allocated"])
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: now["driver"])
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 10 * MiB, raising=False)
    mm = GPUMemoryManager()
    assert mm.device == torch.device("mps")
    mm.reset_peak()
    assert calls == ["empty_cache"]
    now.update(allocated=300, driver=200)
    assert mm.current() == 300
    now.update(allocated=100)
    assert mm.peak() == 300  # the sample above, though usage fell since
    now.update(driver=700)
    assert mm.peak() == 700
    assert "10.0 MiB" in mm.summary()


def test_without_clear_refs_a_reset_hands_no_earlier_peak_to_open_blocks(monkeypatch):
    monkeypatch.setattr(backends, "_clear_hwm", lambda: False)
    x = filled(96 * MiB)  # before the block: must not count in it
    del x
    mm = GPUMemoryManager("cpu")
    with mm.track() as report:
        GPUMemoryManager("cpu").reset_peak()  # a fresh manager: its "peak" is the process's
    assert report.peak_delta < 16 * MiB


@on_linux
def test_without_clear_refs_one_managers_resets_keep_its_open_blocks_peaks(monkeypatch):
    # As `with mm.track(): train_classify(..., memory=mm)`, which resets mm every epoch:
    # the resets clear mm's own samples, so they must hand them to mm's open blocks.
    monkeypatch.setattr(backends, "_clear_hwm", lambda: False)
    mm = GPUMemoryManager("cpu")
    with mm.track() as outer:
        x = filled(48 * MiB)
        mm.current()  # sampled (no resettable kernel counter: samples are what it has)
        del x
        for _ in range(2):
            mm.reset_peak()
            y = filled(8 * MiB)
            mm.current()
            del y
    assert close_to(outer.peak_delta, 48 * MiB)
    with mm.track() as inner:
        pass
    assert inner.peak_delta < 16 * MiB  # nothing from before the block
