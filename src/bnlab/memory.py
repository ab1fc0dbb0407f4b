"""Memory of the training device — CUDA, Apple MPS or the CPU — behind one object.

What each backend measures:

- **CUDA**: bytes held by tensors (``torch.cuda.memory_allocated``); the peak is
  ``max_memory_allocated`` since ``reset_peak_memory_stats``.
- **MPS**: bytes held by tensors (``torch.mps.current_allocated_memory``). Metal has no peak
  counter, so ``reset_peak()`` empties the MPS cache and the peak is the largest of
  ``torch.mps.driver_allocated_memory()`` (the driver's pool, which only grows while cached
  buffers are kept, so it is an upper bound that includes the allocator's cache) and every
  sampled ``current()``.
- **CPU**: the resident set size of the whole process (``VmRSS`` in ``/proc/self/status``);
  the peak is ``VmHWM``, which ``reset_peak()`` resets by writing ``5`` to
  ``/proc/self/clear_refs``. Where that write is refused, or on systems without ``/proc``
  (``resource.getrusage().ru_maxrss`` is then the only counter and doubles as ``current``),
  the peak since the reset is the OS high-water mark if it has risen above its value at the
  reset, else the largest ``current()`` sampled since — a lower bound.

Peak counters are process-wide, and resetting one (``reset_peak``/``track``) resets it for
every user of that device in the process; so each reset first hands the peak seen so far to
every open measurement of that device (every manager's since its ``reset_peak``, every
``track()`` block), and each reports the largest of what it was handed and the counter:
``train_classify`` resetting per epoch inside an outer ``track()`` block loses nothing.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .device import select_device

__all__ = ["GPUMemoryManager", "MemoryReport", "format_bytes"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units with one decimal: ``512 B``, ``12.3 MiB``, ``-1.5 GiB``."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    if value < 1024:
        return f"{sign}{int(value)} B"
    unit = 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{sign}{value:.1f} {_UNITS[unit]}"


@dataclass
class MemoryReport:
    """Memory of one ``track()`` block, in bytes: at its start and end, and the peak inside it
    (absolute, not relative to ``start``). Filled in when the block exits."""

    device: torch.device
    start: int
    end: int
    peak: int

    @property
    def delta(self) -> int:
        """``end - start``: memory the block left behind."""
        return self.end - self.start

    @property
    def peak_delta(self) -> int:
        """``peak - start``: extra memory the block needed at its peak."""
        return self.peak - self.start

    def __str__(self) -> str:
        return (
            f"{self.device}: peak {format_bytes(self.peak)} "
            f"(+{format_bytes(self.peak_delta)} over start {format_bytes(self.start)}), "
            f"end {format_bytes(self.end)}"
        )


# --- backend calls: each driver call sits in one small method so tests can fake it ----------


class _CudaBackend:
    what = "allocated by tensors"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def current(self) -> int:
        return int(torch.cuda.memory_allocated(self.device))

    def peak(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device))

    def reset_peak(self) -> bool:
        torch.cuda.reset_peak_memory_stats(self.device)
        return True

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def capacity(self) -> tuple[int | None, int | None]:
        free, total = torch.cuda.mem_get_info(self.device)
        return int(total), int(free)

    def label(self) -> str:
        return f"{self.device} ({torch.cuda.get_device_name(self.device)})"


class _MpsBackend:
    what = "allocated by tensors"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._peak = 0

    def current(self) -> int:
        now = int(torch.mps.current_allocated_memory())
        self._peak = max(self._peak, now)
        return now

    def peak(self) -> int:
        return max(self.current(), self._peak, int(torch.mps.driver_allocated_memory()))

    def reset_peak(self) -> bool:
        torch.mps.empty_cache()  # so the driver pool regrows only to this block's demand
        self._peak = 0
        self.current()
        return True

    def empty_cache(self) -> None:
        torch.mps.empty_cache()

    def capacity(self) -> tuple[int | None, int | None]:
        recommended = getattr(torch.mps, "recommended_max_memory", None)
        if recommended is None:
            return None, None
        total = int(recommended())
        return total, max(total - int(torch.mps.driver_allocated_memory()), 0)

    def label(self) -> str:
        return f"{self.device} (Apple Metal)"


def _read_proc_status(field: str) -> int | None:
    """``field`` (e.g. ``VmRSS``) of ``/proc/self/status`` in bytes, or None without /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        return None
    return None


def _read_maxrss() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB else


def _clear_hwm() -> bool:
    """Reset the kernel's VmHWM to the current RSS; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_meminfo() -> tuple[int | None, int | None]:
    total = available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "MemTotal":
                    total = int(rest.split()[0]) * 1024
                elif key == "MemAvailable":
                    available = int(rest.split()[0]) * 1024
    except OSError:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, available


class _CpuBackend:
    what = "process RSS"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._hwm_cleared = False
        self._hwm_at_reset = 0
        self._sampled = 0

    def _rss(self) -> int:
        rss = _read_proc_status("VmRSS")
        return rss if rss is not None else (_read_maxrss() or 0)

    def _hwm(self) -> int:
        hwm = _read_proc_status("VmHWM")
        return hwm if hwm is not None else (_read_maxrss() or 0)

    def current(self) -> int:
        now = self._rss()
        self._sampled = max(self._sampled, now)
        return now

    def peak(self) -> int:
        now, hwm = self.current(), self._hwm()
        if self._hwm_cleared or hwm > self._hwm_at_reset:
            return max(hwm, now)
        return self._sampled

    def reset_peak(self) -> bool:
        self._hwm_cleared = _clear_hwm()
        self._hwm_at_reset = self._hwm()
        self._sampled = 0
        self.current()
        return self._hwm_cleared  # else nothing shared was reset: others' peaks stand

    def empty_cache(self) -> None:
        pass

    def capacity(self) -> tuple[int | None, int | None]:
        return _read_meminfo()

    def label(self) -> str:
        return str(self.device)


_Backend = _CudaBackend | _MpsBackend | _CpuBackend


def _backend_for(device: torch.device) -> _Backend:
    if device.type == "cuda":
        return _CudaBackend(device)
    if device.type == "mps":
        return _MpsBackend(device)
    return _CpuBackend(device)


class _Span:
    """One open measurement on a device: the largest peak that counter resets inside it
    took away."""

    __slots__ = ("carried", "__weakref__")

    def __init__(self) -> None:
        self.carried = 0


# Per device: the measurements open now (weak: a manager's span goes when the manager does).
_OPEN_SPANS: dict[str, weakref.WeakSet[_Span]] = {}


def _open_span(key: str) -> _Span:
    span = _Span()
    _OPEN_SPANS.setdefault(key, weakref.WeakSet()).add(span)
    return span


def _device_key(device: torch.device) -> str:
    """One name per counter: ``cuda`` and ``cuda:0`` (when current) are one device, and the
    CPU and MPS counters are per process whatever the index."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return device.type


def _reset_counter(backend: _Backend, key: str) -> None:
    """Reset ``backend``'s process-wide peak counter, handing the peak it held to every open
    measurement of the device (unless the reset could not touch a shared counter: the CPU
    without a writable ``/proc/self/clear_refs``, where each measurement keeps its own)."""
    seen = backend.peak()
    if backend.reset_peak():
        for span in _OPEN_SPANS.get(key, ()):
            span.carried = max(span.carried, seen)


class GPUMemoryManager:
    """Current and peak memory of one device, cleanup, and a ``track()`` block reporter.

    ``device``: ``None`` picks cuda, then mps, then cpu; a name or ``torch.device`` is checked
    by :func:`bnlab.device.select_device` (``ValueError`` if unknown or unavailable).
    ``with GPUMemoryManager() as mm: ...`` runs :meth:`cleanup` when the block exits.
    All sizes are bytes; the module docstring says what each backend measures.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device: torch.device = select_device("auto" if device is None else device)
        self._backend: _Backend = _backend_for(self.device)
        self._key = _device_key(self.device)
        self._span = _open_span(self._key)  # what resets by anyone take from peak()

    def current(self) -> int:
        """Bytes in use now (tensors on cuda/mps, process RSS on the CPU)."""
        return self._backend.current()

    def peak(self) -> int:
        """Largest bytes in use since the last :meth:`reset_peak` (or process start)."""
        return max(self._backend.peak(), self._span.carried)

    def reset_peak(self) -> None:
        """Start a new peak measurement from the current usage."""
        _reset_counter(self._backend, self._key)
        _OPEN_SPANS[self._key].discard(self._span)
        self._span = _open_span(self._key)

    def cleanup(self) -> None:
        """Collect garbage, then hand cached blocks back to the driver (cuda/mps)."""
        gc.collect()
        self._backend.empty_cache()

    @contextlib.contextmanager
    def track(self) -> Iterator[MemoryReport]:
        """``with mm.track() as report:`` — on exit ``report.peak`` is the peak inside the block,
        ``report.start``/``report.end`` the usage at its edges. Resets the device's peak counter."""
        _reset_counter(self._backend, self._key)
        span = _open_span(self._key)
        start = self._backend.current()
        report = MemoryReport(self.device, start, start, start)
        try:
            yield report
        finally:
            report.end = self._backend.current()
            report.peak = max(self._backend.peak(), span.carried, report.start, report.end)
            _OPEN_SPANS[self._key].discard(span)

    def summary(self) -> str:
        """Several lines: device, current, peak, and total/available memory where known."""
        total, available = self._backend.capacity()
        rows = [
            ("device", self._backend.label()),
            ("current", f"{format_bytes(self.current())} ({self._backend.what})"),
            ("peak", format_bytes(self.peak())),
            ("total", "unknown" if total is None else format_bytes(total)),
            ("available", "unknown" if available is None else format_bytes(available)),
        ]
        width = max(len(name) for name, _ in rows) + 1
        return "\n".join(f"{name + ':':<{width}} {value}" for name, value in rows)

    def __enter__(self) -> GPUMemoryManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"GPUMemoryManager(device={str(self.device)!r})"
