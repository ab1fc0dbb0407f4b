"""Runs with outputs: one training run (checkpoints, metrics, curves, resume) and the
notebook's three-way comparison."""

from .compare import DEFAULT_NORMS, compare_table, run_compare
from .config import OPTIMIZERS, TrainConfig
from .plots import plot_curves, plot_overlay
from .run import RunError, RunResult, build_optimizer, run_training, seed_everything

__all__ = [
    "DEFAULT_NORMS",
    "OPTIMIZERS",
    "RunError",
    "RunResult",
    "TrainConfig",
    "build_optimizer",
    "compare_table",
    "plot_curves",
    "plot_overlay",
    "run_compare",
    "run_training",
    "seed_everything",
]
