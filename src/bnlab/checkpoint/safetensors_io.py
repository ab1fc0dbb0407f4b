"""safetensors files in memory: tensors + string metadata to bytes and back, with every failure
reported as a :class:`CheckpointError` naming the file. Parsing never unpickles."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from .errors import DAMAGED, CheckpointError
from .safety import refuse_pickle

__all__ = ["from_bytes", "storable", "to_bytes"]

_HEADER_LEN = 8  # little-endian u64 length of the JSON header that starts the file


def storable(tensors: Mapping[str, object], path: Path) -> dict[str, Tensor]:
    """Detached contiguous CPU copies of ``tensors``: safetensors rejects views and tensors
    sharing storage (tied weights), and a copy also cannot change while it is written.
    Raises :class:`CheckpointError` (naming ``path``) for a value that is not a tensor."""
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                path,
                f"entry {key!r} is a {type(value).__name__}, not a tensor",
                "only tensors can be stored in safetensors; keep other state in `state`",
            )
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def to_bytes(tensors: dict[str, Tensor], metadata: Mapping[str, str], path: Path) -> bytes:
    """The safetensors encoding of ``tensors`` (from :func:`storable`) with ``metadata``."""
    try:
        return _canonical(safetensors.torch.save(tensors, metadata=dict(metadata)))
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a dtype safetensors lacks
        raise CheckpointError(
            path,
            f"cannot be encoded as safetensors ({exc})",
            "convert such tensors to a dtype safetensors supports",
        ) from exc


def _canonical(data: bytes) -> bytes:
    """``data`` with its JSON header's keys sorted. safetensors writes the header in its hash
    maps' order, which changes from process to process, so the same state would give other
    bytes each run; sorted, a checkpoint's bytes (and SHA-256) depend on its state alone.
    (The tensor data and its offsets are untouched; the header is padded with spaces to a
    multiple of 8 bytes, as the format allows.)"""
    size = int.from_bytes(data[:_HEADER_LEN], "little")
    header = json.loads(data[_HEADER_LEN:_HEADER_LEN + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(_HEADER_LEN, "little") + text + data[_HEADER_LEN + size:]


def _metadata(data: bytes, path: Path) -> dict[str, str]:
    if len(data) < _HEADER_LEN:
        raise CheckpointError(
            path, f"is truncated ({len(data)} bytes, no safetensors header)", DAMAGED
        )
    size = int.from_bytes(data[:_HEADER_LEN], "little")
    if size > len(data) - _HEADER_LEN:
        raise CheckpointError(
            path,
            f"is truncated or not safetensors (header of {size} bytes, file {len(data)})",
            DAMAGED,
        )
    try:
        header = json.loads(data[_HEADER_LEN : _HEADER_LEN + size])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(
            path, f"is not a safetensors file (bad header: {exc})", DAMAGED
        ) from exc
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError(path, "is not a safetensors file (malformed header)", DAMAGED)
    return meta


def from_bytes(
    data: bytes, path: Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of the safetensors ``data`` read from ``path``, tensors moved to
    ``map_location``. Refuses pickle content; raises :class:`CheckpointError` if malformed."""
    refuse_pickle(path, inside=path.parent, data=data)
    metadata = _metadata(data, path)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # SafetensorError subclasses Exception directly
        raise CheckpointError(path, f"is not a valid safetensors file ({exc})", DAMAGED) from exc
    device = torch.device(map_location)
    if device.type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, metadata
