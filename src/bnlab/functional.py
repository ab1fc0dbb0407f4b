"""``bnlab.functional``: the stateless ops, as ``torch.nn.functional`` is to ``torch.nn``."""

from .norm.functional import batch_norm, batch_stats, normalize, update_running_stats

__all__ = ["batch_norm", "batch_stats", "normalize", "update_running_stats"]
