"""Memory of the training device: :class:`GPUMemoryManager` (current and peak usage,
cleanup, ``track()`` blocks) over each device kind's counters (:mod:`.backends`)."""

from .manager import GPUMemoryManager, MemoryReport, format_bytes

__all__ = ["GPUMemoryManager", "MemoryReport", "format_bytes"]
