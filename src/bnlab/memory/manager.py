"""Memory of the training device — CUDA, Apple MPS or the CPU — behind one object
(:class:`GPUMemoryManager`); what each device's numbers mean: :mod:`.backends`.

Peak counters are process-wide, and resetting one (``reset_peak``/``track``) resets it for
every user of that device in the process; so each reset first hands the peak seen so far to
every open measurement of that device (every manager's since its ``reset_peak``, every
``track()`` block), and each reports the largest of what it was handed and the counter:
``train_classify`` resetting per epoch inside an outer ``track()`` block loses nothing.
(Where the CPU's counter cannot be reset, a reset clears only one manager's own samples,
and hands them only to that manager's open measurements.)
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..device import select_device
from .backends import Backend, backend_for

__all__ = ["GPUMemoryManager", "MemoryReport", "format_bytes"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units with one decimal: ``512 B``, ``12.3 MiB``, ``-1.5 GiB``."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    if value < 1024:
        return f"{sign}{int(value)} B"
    unit = 0
    while round(value, 1) >= 1024 and unit < len(_UNITS) - 1:  # (1048575 B: 1.0 MiB)
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


class _Span:
    """One open measurement on a device (through ``backend``): the largest peak that counter
    resets inside it took away."""

    __slots__ = ("carried", "backend", "__weakref__")

    def __init__(self, backend: Backend) -> None:
        self.carried = 0
        self.backend = backend


# Per device: the measurements open now (weak: a manager's span goes when the manager does).
_OPEN_SPANS: dict[str, weakref.WeakSet[_Span]] = {}


def _open_span(key: str, backend: Backend) -> _Span:
    span = _Span(backend)
    _OPEN_SPANS.setdefault(key, weakref.WeakSet()).add(span)
    return span


def _device_key(device: torch.device) -> str:
    """One name per counter: ``cuda`` and ``cuda:0`` (when current) are one device, and the
    CPU and MPS counters are per process whatever the index."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return device.type


def _reset_counter(backend: Backend, key: str) -> None:
    """Reset ``backend``'s process-wide peak counter, handing the peak it held to every open
    measurement of the device. Where the reset cannot touch a shared counter (the CPU
    without a writable ``/proc/self/clear_refs``) it resets only ``backend``'s own samples:
    then only the measurements through ``backend`` (one manager's) are handed the peak."""
    seen = backend.peak()
    shared = backend.reset_peak()
    for span in _OPEN_SPANS.get(key, ()):
        if shared or span.backend is backend:
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
        self._backend: Backend = backend_for(self.device)
        self._key = _device_key(self.device)
        self._span = _open_span(self._key, self._backend)  # what resets by anyone take from peak()

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
        self._span = _open_span(self._key, self._backend)

    def cleanup(self) -> None:
        """Collect garbage, then hand cached blocks back to the driver (cuda/mps)."""
        gc.collect()
        self._backend.empty_cache()

    @contextlib.contextmanager
    def track(self) -> Iterator[MemoryReport]:
        """``with mm.track() as report:`` — on exit ``report.peak`` is the peak inside the block,
        ``report.start``/``report.end`` the usage at its edges. Resets the device's peak counter."""
        _reset_counter(self._backend, self._key)
        span = _open_span(self._key, self._backend)
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
