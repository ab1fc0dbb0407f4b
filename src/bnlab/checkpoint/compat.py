"""Load-time compatibility: does a saved state fit the model, optimizer or scheduler it is being
loaded into? Checked before anything is loaded, so a failed load changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .errors import DAMAGED, CheckpointError

__all__ = ["apply_state", "check_model", "check_owner"]


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def check_model(model: nn.Module, saved: dict[str, Tensor], path: Path) -> None:
    """Raise unless ``saved`` has exactly ``model``'s state_dict keys, shapes and dtypes."""
    expected = model.state_dict()
    problems, mismatched = [], []
    missing = [k for k in expected if k not in saved]
    unexpected = sorted(k for k in saved if k not in expected)
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    for key in (k for k in expected if k in saved):
        mine, theirs = expected[key], saved[key]
        if isinstance(mine, Tensor) and tuple(mine.shape) != tuple(theirs.shape):
            mismatched.append(
                f"{key}: saved shape {tuple(theirs.shape)}, model {tuple(mine.shape)}"
            )
        elif isinstance(mine, Tensor) and mine.dtype != theirs.dtype:
            mismatched.append(f"{key}: saved dtype {theirs.dtype}, model {mine.dtype}")
    if mismatched:
        problems.append(_few(mismatched))
    if problems:
        raise CheckpointError(
            path,
            "does not match the model: " + "; ".join(problems),
            "load it into the architecture it was saved from (same model, norm and sizes)",
        )


def check_owner(owner: Any, saved_class: str, tree: Any, kind: str, path: Path) -> None:
    """Raise unless ``owner`` (an optimizer or scheduler) is of the class that saved ``tree``
    and, for an optimizer, has parameter groups of the saved sizes."""
    if saved_class != type(owner).__name__:
        raise CheckpointError(
            path,
            f"holds {saved_class or 'unknown'} {kind} state but the {kind} is "
            f"{type(owner).__name__}",
            f"create the same {kind} as the run that saved it",
        )
    if kind != "optimizer":
        return
    try:
        sizes = [len(group["params"]) for group in tree["param_groups"]]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(path, f"has malformed param_groups ({exc})", DAMAGED) from exc
    mine = [len(g["params"]) for g in owner.state_dict()["param_groups"]]
    if sizes != mine:
        raise CheckpointError(
            path,
            f"has parameter groups of sizes {sizes}; the optimizer's are {mine}",
            "build the optimizer over the same parameters as the run that saved it",
        )


def apply_state(owner: Any, state: Any, path: Path, kind: str) -> None:
    """``owner.load_state_dict(state)``, with its errors as :class:`CheckpointError`."""
    try:
        owner.load_state_dict(state)
    except Exception as exc:  # whatever a load_state_dict raises for state it cannot take
        raise CheckpointError(
            path,
            f"cannot be loaded into the {kind} ({type(exc).__name__}: {exc})",
            f"build the {kind} as in the run that saved it",
        ) from exc
