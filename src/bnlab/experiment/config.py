"""Run settings as small frozen dataclasses; the CLI builds them, the runners read them."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..models import NORMS, available_models

OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: model, data, optimizer and schedule.

    ``limit``: use only the first ``limit`` samples of each split; ``max_steps``: at most
    this many training batches per epoch — both for quick runs and tests. ``data_dir``:
    where the Fashion-MNIST files are (None: the standard lookup order); ``download``:
    whether a missing dataset may be downloaded.
    """

    model: str = "lenet"
    norm: str = "bnlab"
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    download: bool = True
    limit: int | None = None
    max_steps: int | None = None

    # Settings that may differ between a run and its resumption (the rest must match).
    RESUMABLE = ("epochs", "device", "data_dir", "download")

    def __post_init__(self) -> None:
        problems = []
        if self.model not in available_models():
            known = ", ".join(available_models())
            problems.append(f"unknown model {self.model!r} (known: {known})")
        if self.norm not in NORMS:
            problems.append(f"unknown norm {self.norm!r} (known: {', '.join(NORMS)})")
        if self.optimizer not in OPTIMIZERS:
            known = ", ".join(OPTIMIZERS)
            problems.append(f"unknown optimizer {self.optimizer!r} (known: {known})")
        for name in ("epochs", "batch_size", "limit", "max_steps"):
            value = getattr(self, name)
            if value is None and name in ("limit", "max_steps"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name, valid, rule in (("lr", lambda v: v > 0, "positive"),
                                  ("weight_decay", lambda v: v >= 0, ">= 0"),
                                  ("momentum", lambda v: 0 <= v < 1, "in [0, 1)")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{name} must be a number, got {value!r}")
            elif not valid(value):
                problems.append(f"{name} must be {rule}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.device, str):
            problems.append(f"device must be a string, got {self.device!r}")
        if isinstance(self.data_dir, os.PathLike):  # kept as str: the config goes to JSON
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            problems.append(f"data_dir must be a path or None, got {self.data_dir!r}")
        if not isinstance(self.download, bool):
            problems.append(f"download must be true or false, got {self.download!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def mismatches(self, other: TrainConfig) -> list[str]:
        """Settings (outside ``RESUMABLE``) in which ``other`` differs from this config."""
        return [
            f"{f.name}: {getattr(other, f.name)!r} (checkpoint has {getattr(self, f.name)!r})"
            for f in fields(self)
            if f.name not in self.RESUMABLE and getattr(self, f.name) != getattr(other, f.name)
        ]
