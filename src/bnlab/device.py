"""Device selection: ``auto`` picks CUDA, then Apple MPS, then the CPU; explicit names are
checked so that a typo or a missing accelerator fails with one clear line."""

from __future__ import annotations

import re

import torch

__all__ = ["select_device"]

_NAME = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(name: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` for ``name``: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
    ``"mps"`` (case and surrounding spaces ignored; a ``torch.device`` is checked the same way).

    ``"auto"`` returns ``cuda`` if available, else ``mps`` if available, else ``cpu``.
    Raises ``ValueError`` for an unknown name or a device this machine does not have.
    """
    text = str(name).strip().lower()
    match = _NAME.match(text)
    if match is None:
        raise ValueError(
            f"unknown device {str(name)!r}; expected one of: auto, cpu, cuda, cuda:N, mps"
        )
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if index is not None:
            raise ValueError(f"unknown device {str(name)!r}; 'auto' takes no index")
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device(text)
    if kind == "mps":
        if not _mps_available():
            raise ValueError(
                f"device {text!r} requested but Apple MPS is not available on this machine; "
                "use 'auto' or 'cpu'"
            )
        return torch.device(text)
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {text!r} requested but CUDA is not available (torch {torch.__version__}, "
            "no usable NVIDIA GPU or a CPU-only build); use 'auto' or 'cpu'"
        )
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise ValueError(
            f"device {text!r} requested but this machine has {count} CUDA device(s) "
            f"(cuda:0..cuda:{count - 1}); use a valid index, 'cuda' or 'auto'"
        )
    return torch.device(text)
