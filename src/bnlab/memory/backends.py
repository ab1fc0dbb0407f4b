"""The memory counters of each device kind behind one small interface (``current``,
``peak``, ``reset_peak``, ``empty_cache``, ``capacity``, ``label``), each driver call in one
method so tests can fake it.

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
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

__all__ = ["Backend", "backend_for"]


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
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._hwm_cleared = False
        self._hwm_at_reset = 0
        self._sampled = 0

    @property
    def what(self) -> str:
        if _read_proc_status("VmRSS") is not None:
            return "process RSS"
        if _read_maxrss() is not None:
            return "the process's largest RSS so far: no /proc to read the current one"
        return "unknown here: no /proc, no getrusage"

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


Backend = _CudaBackend | _MpsBackend | _CpuBackend


def backend_for(device: torch.device) -> Backend:
    if device.type == "cuda":
        return _CudaBackend(device)
    if device.type == "mps":
        return _MpsBackend(device)
    return _CpuBackend(device)
