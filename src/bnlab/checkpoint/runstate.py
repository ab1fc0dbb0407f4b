"""``state.json``: the run state (epoch, config, history, RNG states, caller's extras) and the
manifest of the checkpoint's other files (size and SHA-256 of each), written last.

Layout::

    {"format": "bnlab-checkpoint", "version": 1, "epoch": int, "config": {...},
     "history": [...], "rng": {...capture_rng_state()...}, ...caller's keys...,
     "files": {"model.safetensors": {"bytes": int, "sha256": hex}, ...}}

Values go through ``json``: tuples come back as lists and non-string dict keys as strings;
NaN and infinities are written as ``NaN``/``Infinity`` (Python's JSON dialect).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import DAMAGED, CheckpointError
from .rng import capture_rng_state
from .safety import read_limited

__all__ = [
    "FORMAT",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "SCHEDULER_FILE",
    "STATE_FILE",
    "VERSION",
    "build_run_state",
    "file_entry",
    "is_complete",
    "parse_run_state",
]

FORMAT = "bnlab-checkpoint"
# state.json holds configs, histories and RNG states: kilobytes; refuse anything near this
MAX_STATE_BYTES = 64 << 20
# a data file's size in a manifest: far beyond any model, far below what overflows a read
MAX_DATA_BYTES = 1 << 48
VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.safetensors"
STATE_FILE = "state.json"
DATA_FILES = (MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE)
_RESERVED = ("format", "version", "files")


def file_entry(data: bytes) -> dict[str, Any]:
    """The manifest entry of one file's bytes."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def build_run_state(
    state: Mapping[str, Any] | None, files: Mapping[str, bytes], path: Path
) -> bytes:
    """``state.json``'s bytes for the caller's ``state`` and the data ``files`` (name -> bytes).
    ``state`` may hold ``epoch`` (int >= 0, default 0), ``config`` (dict, default {}),
    ``history`` (list, default []), ``rng`` (default: :func:`capture_rng_state` now) and any
    other JSON-serializable keys except ``format``, ``version`` and ``files``."""
    state = dict(state or {})
    reserved = [k for k in _RESERVED if k in state]
    if reserved:
        raise CheckpointError(path, f"state uses reserved key(s) {reserved}", "rename them")
    run: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": state.pop("epoch", 0),
        "config": state.pop("config", {}),
        "history": state.pop("history", []),
        "rng": state.pop("rng") if "rng" in state else capture_rng_state(),
    }
    _check_types(run, path, "state", "see save_checkpoint's docstring for the expected types")
    run.update(state)
    run["files"] = {name: file_entry(data) for name, data in files.items()}
    try:
        data = json.dumps(run, indent=2).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # ValueError: a circular reference
        raise CheckpointError(
            path,
            f"state is not JSON-serializable ({exc})",
            "pass only dicts, lists, strings, numbers, booleans and None in state",
        ) from exc
    if len(data) > MAX_STATE_BYTES:  # (what a load reads: refused here, not there)
        raise CheckpointError(
            path, f"would be {len(data)} bytes, over the {MAX_STATE_BYTES} a load reads",
            "keep long logs (per-step histories) in files of their own, not in state")
    return data


def _check_types(run: Mapping[str, Any], path: Path, what: str, hint: str) -> None:
    problems = []
    if not _is_count(run.get("epoch")):
        problems.append(f"'epoch' must be an int >= 0, got {run.get('epoch')!r}")
    for key, kind in (("config", dict), ("history", list), ("rng", dict)):
        if not isinstance(run.get(key), kind):
            problems.append(f"'{key}' must be a {kind.__name__}, got {type(run.get(key)).__name__}")
    if problems:
        raise CheckpointError(path, f"{what}: " + ", ".join(problems), hint)


def parse_run_state(data: bytes, path: Path) -> dict[str, Any]:
    """The validated run state in ``state.json``'s ``data`` read from ``path``."""
    try:
        run = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(path, f"is not valid JSON ({exc})", DAMAGED) from exc
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        found = run.get("format") if isinstance(run, dict) else type(run).__name__
        raise CheckpointError(
            path,
            f"is not a bnlab checkpoint state (format {found!r}, expected {FORMAT!r})",
            "pass a directory written by bnlab's save_checkpoint",
        )
    version = run.get("version")
    if not _is_count(version) or version != VERSION:
        hint = "upgrade bnlab" if _is_count(version) and version > VERSION else DAMAGED
        raise CheckpointError(
            path, f"has checkpoint version {version!r}; this bnlab reads version {VERSION}", hint
        )
    _check_types(run, path, "invalid run state", DAMAGED)
    files = run.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise CheckpointError(path, f"lists no {MODEL_FILE} in 'files'", DAMAGED)
    for name, entry in files.items():
        if (
            name not in DATA_FILES
            or not isinstance(entry, dict)
            or not _is_count(entry.get("bytes"))
            or entry["bytes"] > MAX_DATA_BYTES
            or not isinstance(entry.get("sha256"), str)
        ):
            raise CheckpointError(path, f"has a malformed 'files' entry {name!r}", DAMAGED)
    return run


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a readable ``state.json`` and every file it lists with the
    listed size (a cheap check, no hashing)."""
    try:
        path = directory / STATE_FILE
        data = read_limited(path, MAX_STATE_BYTES)
        if data is None:
            return False
        run = parse_run_state(data, path)
        return all(
            (directory / name).stat().st_size == entry["bytes"]
            for name, entry in run["files"].items()
        )
    except (OSError, CheckpointError):
        return False
