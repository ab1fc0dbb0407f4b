"""safetensors files in memory: tensors + string metadata to bytes and back, with every failure
reported as a :class:`CheckpointError` naming the file. Parsing never unpickles."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor
from torch.nn.parameter import is_lazy

from .errors import DAMAGED, CheckpointError
from .safety import refuse_pickle

__all__ = ["from_bytes", "storable", "to_bytes"]

_HEADER_LEN = 8  # little-endian u64 length of the JSON header that starts the file
# Dtypes safetensors writes but cannot read back (0.8: no reader for F8_E8M0)
_UNREADABLE = frozenset(filter(None, [getattr(torch, "float8_e8m0fnu", None)]))
# The safetensors header's own key: a tensor of that name would be taken for the metadata
_RESERVED = "__metadata__"


def storable(tensors: Mapping[str, object], path: Path) -> dict[str, Tensor]:
    """Detached contiguous CPU copies of ``tensors``: safetensors rejects views and tensors
    sharing storage (tied weights), and a copy also cannot change while it is written.
    Raises :class:`CheckpointError` (naming ``path``) for a value that is not a tensor."""
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if key == _RESERVED:
            raise CheckpointError(path, f"entry {key!r} has the name safetensors reserves "
                                  "for its metadata", "rename that parameter or buffer")
        if not isinstance(value, Tensor):
            raise CheckpointError(
                path,
                f"entry {key!r} is a {type(value).__name__}, not a tensor",
                "only tensors can be stored in safetensors; keep other state in `state`",
            )
        if is_lazy(value):
            raise CheckpointError(path, f"entry {key!r} is an uninitialized lazy parameter",
                                  "run a forward pass first, so that it has a shape")
        what = value.dtype if value.layout == torch.strided else value.layout
        if value.layout != torch.strided or value.dtype in _UNREADABLE:
            raise CheckpointError(
                path, f"entry {key!r} is a {what} tensor, which safetensors cannot store "
                "(or read back)", "store such tensors dense, in a supported dtype")
        try:
            out[key] = value.detach().to("cpu", copy=True).contiguous()
        except (RuntimeError, NotImplementedError) as exc:  # e.g. float4: no copy kernel
            raise CheckpointError(path, f"entry {key!r} ({what}) cannot be copied for "
                                  f"storing ({exc})", "store it in a supported dtype") from exc
    return out


def to_bytes(tensors: dict[str, Tensor], metadata: Mapping[str, str], path: Path) -> bytes:
    """The safetensors encoding of ``tensors`` (from :func:`storable`) with ``metadata``."""
    try:
        return _canonical(safetensors.torch.save(tensors, metadata=dict(metadata)))
    except (ValueError, TypeError, RuntimeError, KeyError, NotImplementedError) as exc:
        # e.g. a dtype safetensors lacks (KeyError for complex128, NotImplementedError...)
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
