"""Training harness: the notebook's ``train_classify`` loop, evaluation and History."""

from .evaluate import Evaluation, eval_mode, evaluate
from .history import EpochRecord, History
from .loop import MemoryMeter, NonFiniteLossError, NonFiniteTestLossError, train_classify

__all__ = [
    "EpochRecord",
    "Evaluation",
    "History",
    "MemoryMeter",
    "NonFiniteLossError",
    "NonFiniteTestLossError",
    "eval_mode",
    "evaluate",
    "train_classify",
]
