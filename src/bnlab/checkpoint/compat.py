"""Load-time compatibility: does a saved state fit the model, optimizer or scheduler it is being
loaded into? Checked before anything is loaded, so a failed load changes nothing; and the
load itself (:func:`apply_all`), which puts back what it changed if one part fails."""

from __future__ import annotations

import contextlib
import copy
import numbers
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from .errors import DAMAGED, CheckpointError

__all__ = ["apply_all", "apply_state", "check_model", "check_owner"]


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
        if is_lazy(mine):
            continue  # (an uninitialized lazy parameter takes the saved shape, as in torch)
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
    problems = _hyperparameter_problems(owner, tree) + _state_problems(owner, tree)
    if problems:
        raise CheckpointError(path, "has optimizer state that does not fit the optimizer: "
                              + _few(problems), DAMAGED)


# Optimizers whose per-parameter state tensors have the parameter's shape (or one element,
# like Adam's step): torch's load_state_dict checks no shape, and their fused and foreach
# kernels trust them (a short exp_avg is written past its end).
_ELEMENTWISE = tuple(getattr(torch.optim, name) for name in (
    "SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta",
    "ASGD", "Rprop") if hasattr(torch.optim, name))


def _kind_of(value: Any) -> str:
    """A hyperparameter's kind, for comparing a saved value with the optimizer's own."""
    if isinstance(value, bool):
        return "flag"
    if isinstance(value, numbers.Real) or (isinstance(value, Tensor) and value.numel() == 1):
        return "number"  # (numbers.Real: also numpy's scalars, which torch takes)
    if isinstance(value, (tuple, list)):
        return f"{len(value)} numbers" if all(_kind_of(v) == "number" for v in value) else "list"
    return type(value).__name__


def _has_none(value: Any) -> bool:
    return value is None or (isinstance(value, (tuple, list)) and any(v is None for v in value))


def _hyperparameter_problems(owner: torch.optim.Optimizer, tree: Any) -> list[str]:
    """Saved group settings whose kind differs from the optimizer's own (``lr`` a string,
    ``betas`` one number): they would fail, or worse, inside ``step()``."""
    problems = []
    for index, (saved, group) in enumerate(zip(tree["param_groups"], owner.param_groups)):
        if not isinstance(saved, dict):
            return [f"param_groups[{index}] is not a mapping"]
        for key, value in group.items():
            if key == "params" or key not in saved or _has_none(value) or _has_none(saved[key]):
                continue  # (None: "the default" in some settings, e.g. LBFGS's line search)
            if _kind_of(saved[key]) != _kind_of(value):
                problems.append(f"param_groups[{index}].{key} is {saved[key]!r}, "
                                f"not {_kind_of(value)}")
    return problems


def _state_problems(owner: torch.optim.Optimizer, tree: Any) -> list[str]:
    """Per-parameter state that does not belong to a parameter, or (for the optimizers in
    ``_ELEMENTWISE``) a tensor of another shape than its parameter's."""
    params = {}
    for saved, group in zip(tree["param_groups"], owner.param_groups):
        params.update(zip((str(i) for i in saved["params"]), group["params"]))
    state = tree.get("state", {})
    if not isinstance(state, dict):
        return ["state is not a mapping"]
    problems = []
    for key, entry in state.items():
        param = params.get(str(key))
        if param is None or not isinstance(entry, dict):
            problems.append(f"state[{key}] belongs to no parameter of the optimizer")
            continue
        if not isinstance(owner, _ELEMENTWISE):
            continue
        for name, value in entry.items():
            if not isinstance(value, Tensor):
                continue
            if name == "step" and value.numel() != 1:
                problems.append(f"state[{key}].step has {value.numel()} elements, not one")
            elif value.shape != param.shape and value.numel() != 1:
                problems.append(f"state[{key}].{name} has shape {tuple(value.shape)}, its "
                                f"parameter {tuple(param.shape)}")
    return problems


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


def _snapshot(owner: Any) -> Any:
    """A copy of ``owner.state_dict()`` that loading into ``owner`` cannot change."""
    if isinstance(owner, nn.Module):  # its state dict aliases the live tensors
        # (an uninitialized lazy parameter has nothing to copy)
        return {k: v if is_lazy(v) else v.detach().clone()
                for k, v in owner.state_dict().items()}
    return copy.deepcopy(owner.state_dict())


def apply_all(targets: list[tuple[Any, Any, Path, str]]) -> None:
    """Load each ``(owner, state, path, kind)`` in turn; if one fails, restore those already
    changed (and the failed one) to their snapshots, then raise its error."""
    snapshots = [_snapshot(owner) for owner, *_ in targets]
    for done, (owner, state, path, kind) in enumerate(targets):
        try:
            apply_state(owner, state, path, kind)
        except BaseException:
            for (earlier, *_), saved in zip(targets[: done + 1], snapshots):
                # A restore that fails too (state torch cannot load back, e.g. into an
                # expanded buffer) must neither hide the error nor stop the others.
                with contextlib.suppress(Exception):
                    earlier.load_state_dict(saved)
            raise
