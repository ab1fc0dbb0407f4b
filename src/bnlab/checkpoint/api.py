"""Save and load a training checkpoint: a directory of safetensors files and ``state.json``.

Files (see :mod:`.runstate` for ``state.json``):

- ``model.safetensors``: ``model.state_dict()``.
- ``optimizer.safetensors`` (if an optimizer is given): the tensors of
  ``optimizer.state_dict()`` under dotted keys (``state.{param_index}.{name}``); the rest
  (param_groups, non-tensor state such as a float ``step``) as JSON in the metadata entry
  ``tree`` (:mod:`.tree`), and the optimizer's class name in ``class``.
- ``scheduler.safetensors`` (if a scheduler is given): the same for ``scheduler.state_dict()``.
- ``state.json``: the run state, RNG states as base64 (:mod:`.rng`), and each file's size and
  SHA-256, so truncation and corruption are detected on load.

Writes are atomic (:mod:`.atomic`); reads never unpickle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic import find_directory, read_consistently, replace_directory
from .compat import apply_all, check_model, check_owner
from .errors import DAMAGED, CheckpointError
from .runstate import (
    DATA_FILES,
    MAX_STATE_BYTES,
    MODEL_FILE,
    OPTIMIZER_FILE,
    SCHEDULER_FILE,
    STATE_FILE,
    build_run_state,
    is_complete,
    parse_run_state,
)
from .safetensors_io import from_bytes, storable, to_bytes
from .safety import read_limited, refuse_pickle
from .tree import UnsupportedValue, join_tree, split_tree

__all__ = ["Checkpoint", "checkpoint_exists", "load_checkpoint", "read_checkpoint_state",
           "save_checkpoint"]

_WHICH = "pass the directory save_checkpoint wrote (it holds state.json), e.g. runs/NAME/checkpoint"


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``state``: the validated ``state.json`` (epoch, config, history,
    rng, files, caller's keys); ``model_state``: the model's state dict (tensors on
    ``map_location``); ``optimizer_state``/``scheduler_state``: their ``state_dict()`` as saved,
    or None if not saved; ``path``: the directory read."""

    state: dict[str, Any]
    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None = None
    path: Path | None = None


# --- saving ---------------------------------------------------------------------------------


def _check_replaceable(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise CheckpointError(target, "exists and is not a directory", "choose a directory path")
    if target.is_dir():
        try:
            names = [p.name for p in target.iterdir()]
        except OSError as exc:
            raise CheckpointError(
                target, f"cannot be listed ({exc})", "check its permissions"
            ) from exc
        foreign = sorted(name for name in names if name not in (*DATA_FILES, STATE_FILE))
        if foreign:
            raise CheckpointError(
                target,
                f"holds files that are not part of a bnlab checkpoint ({', '.join(foreign[:3])}),"
                " so it will not be replaced",
                "save to a new or empty directory",
            )


def _tree_bytes(tree: Any, kind: str, owner: object, path: Path) -> bytes:
    try:
        document, tensors = split_tree(tree)
    except UnsupportedValue as exc:
        raise CheckpointError(path, f"{kind} state: {exc}", "only tensors and JSON values") from exc
    metadata = {
        "format": f"bnlab-{kind}",
        "class": type(owner).__name__,
        "tree": json.dumps(document, allow_nan=False),
    }
    return to_bytes(storable(tensors, path), metadata, path)


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    scheduler: Any = None,
) -> Path:
    """Write ``model`` (and ``optimizer``, ``scheduler``, run ``state``) to ``directory``,
    replacing an earlier checkpoint there atomically; returns the directory.

    ``state``: JSON-serializable run state — ``epoch`` (int), ``config`` (dict), ``history``
    (list), ``rng`` (a :func:`capture_rng_state` dict; captured now if absent) and any other
    keys. Raises :class:`CheckpointError` for unstorable values, a ``directory`` holding other
    files, or an I/O error (the earlier checkpoint then stays in place)."""
    target = Path(directory)
    if target.is_symlink():  # replace what the link names, keeping the link
        target = target.resolve()
    _check_replaceable(target)
    files: dict[str, bytes] = {}
    model_path = target / MODEL_FILE
    files[MODEL_FILE] = to_bytes(
        storable(model.state_dict(), model_path),
        {"format": "bnlab-model", "torch": torch.__version__},
        model_path,
    )
    if optimizer is not None:
        path = target / OPTIMIZER_FILE
        files[OPTIMIZER_FILE] = _tree_bytes(optimizer.state_dict(), "optimizer", optimizer, path)
    if scheduler is not None:
        path = target / SCHEDULER_FILE
        files[SCHEDULER_FILE] = _tree_bytes(scheduler.state_dict(), "scheduler", scheduler, path)
    files[STATE_FILE] = build_run_state(state, files, target / STATE_FILE)  # written last
    try:
        replace_directory(target, files, is_complete)
    except OSError as exc:
        raise CheckpointError(
            target,
            f"could not be written ({exc})",
            "check that the directory is writable and the disk has space",
        ) from exc
    return target


# --- loading --------------------------------------------------------------------------------


def _locate(directory: str | Path) -> Path:
    """The checkpoint directory to read for ``directory`` (after a crash mid-swap: the copy
    renamed aside). Refuses pickle files and directories holding them."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        refuse_pickle(target)
        raise CheckpointError(target, "is a file, not a checkpoint directory", _WHICH)
    found = find_directory(target, is_complete)
    if found is None:
        raise CheckpointError(target, "does not exist", _WHICH)
    if not (found / STATE_FILE).is_file():
        for entry in sorted(found.iterdir()):
            if entry.is_file():
                refuse_pickle(entry, inside=found)
        raise CheckpointError(found, f"is not a bnlab checkpoint (no {STATE_FILE})", _WHICH)
    return found


def checkpoint_exists(directory: str | Path) -> bool:
    """Whether ``directory`` holds a checkpoint, counting the copy an interrupted save left
    renamed aside (which loading and the next save use)."""
    return find_directory(Path(directory), is_complete) is not None


def _read(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of regular file ``path`` (a longer one is an error)."""
    try:
        data = read_limited(path, limit)
    except FileNotFoundError as exc:
        raise CheckpointError(path, "is missing", DAMAGED) from exc
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read ({exc})", "check its permissions") from exc
    if data is None:
        raise CheckpointError(path, f"is not a regular file of at most {limit} bytes", DAMAGED)
    return data


def _read_run_state(found: Path) -> dict[str, Any]:
    path = found / STATE_FILE
    data = _read(path, MAX_STATE_BYTES)
    refuse_pickle(path, inside=found, data=data)
    return parse_run_state(data, path)


def _read_listed(found: Path, name: str, run: dict[str, Any]) -> bytes:
    """The bytes of data file ``name``, checked against the manifest in ``state.json``."""
    path = found / name
    if name not in run["files"]:
        raise CheckpointError(path, f"is not listed in {STATE_FILE}", DAMAGED)
    entry = run["files"][name]
    # a larger file is an error either way: reading one byte more tells it apart
    data = _read(path, entry["bytes"] + 1)
    refuse_pickle(path, inside=found, data=data)
    if len(data) != entry["bytes"]:
        raise CheckpointError(
            path,
            f"is truncated or altered ({len(data)} bytes, expected {entry['bytes']})",
            DAMAGED,
        )
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(path, f"is corrupted (SHA-256 differs from {STATE_FILE})", DAMAGED)
    return data


def _load_tree(found: Path, name: str, kind: str, run: dict, map_location) -> tuple[Any, str]:
    path = found / name
    tensors, metadata = from_bytes(_read_listed(found, name, run), path, map_location)
    if metadata.get("format") != f"bnlab-{kind}":
        raise CheckpointError(path, f"is not a bnlab {kind} file", DAMAGED)
    try:
        tree = join_tree(json.loads(metadata["tree"]), tensors)
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CheckpointError(path, f"has a malformed {kind} state ({exc})", DAMAGED) from exc
    if not isinstance(tree, dict):
        raise CheckpointError(path, f"has a malformed {kind} state (not a dict)", DAMAGED)
    return tree, metadata.get("class", "")


def read_checkpoint_state(directory: str | Path) -> dict[str, Any]:
    """The validated run state (``state.json``) of the checkpoint in ``directory``."""
    return read_consistently(Path(directory), lambda: _read_run_state(_locate(directory)))


def load_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read the checkpoint in ``directory`` and, if given, load it into ``model``,
    ``optimizer`` and ``scheduler`` so they equal the saved ones bit for bit. Everything is
    read and checked before anything is loaded, and a load that fails part-way puts back what
    it changed: on error, ``model``, ``optimizer`` and ``scheduler`` are as they were. RNG
    states are not restored here: call :func:`restore_rng_state` with
    ``checkpoint.state["rng"]``. Raises
    :class:`CheckpointError` for pickles, missing/corrupt/truncated files, bad JSON, a wrong
    format or version, or a model/optimizer/scheduler that does not match."""
    found, run, model_state, trees = read_consistently(
        Path(directory), lambda: _read_all(directory, optimizer, scheduler, map_location))
    model_path = found / MODEL_FILE
    if model is not None:
        check_model(model, model_state, model_path)
    targets = [(owner, state, path, kind) for owner, state, path, kind in (
        (model, model_state, model_path, "model"),
        (optimizer, trees.get("optimizer"), found / OPTIMIZER_FILE, "optimizer"),
        (scheduler, trees.get("scheduler"), found / SCHEDULER_FILE, "scheduler"),
    ) if owner is not None]
    apply_all(targets)
    return Checkpoint(run, model_state, trees.get("optimizer"), trees.get("scheduler"), found)


def _read_all(directory: str | Path, optimizer: Any, scheduler: Any, map_location
              ) -> tuple[Path, dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """``(found, run state, model state, {kind: tree})``, every file read and checked (and the
    trees against ``optimizer``/``scheduler``), nothing loaded."""
    found = _locate(directory)
    run = _read_run_state(found)
    model_path = found / MODEL_FILE
    model_state, meta = from_bytes(_read_listed(found, MODEL_FILE, run), model_path, map_location)
    if meta.get("format") != "bnlab-model":
        raise CheckpointError(model_path, "is not a bnlab model file", DAMAGED)

    trees: dict[str, Any] = {}
    for kind, name, owner in (
        ("optimizer", OPTIMIZER_FILE, optimizer),
        ("scheduler", SCHEDULER_FILE, scheduler),
    ):
        if name not in run["files"]:
            if owner is not None:
                raise CheckpointError(
                    found, f"holds no {kind} state", f"pass {kind}=None to load it without one"
                )
            continue
        tree, saved_class = _load_tree(found, name, kind, run, map_location)
        if owner is not None:
            check_owner(owner, saved_class, tree, kind, found / name)
        trees[kind] = tree
    return found, run, model_state, trees
