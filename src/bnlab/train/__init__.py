"""Training harness: the notebook's ``train_classify`` loop, evaluation and History."""

from .evaluate import Evaluation, eval_mode, evaluate
from .history import EpochRecord, History
from .loop import MemoryMeter, NonFiniteLossError, train_classify

__all__ = [
    "EpochRecord",
    "Evaluation",
    "History",
    "MemoryMeter",
    "NonFiniteLossError",
    "eval_mode",
    "evaluate",
    "train_classify",
]
