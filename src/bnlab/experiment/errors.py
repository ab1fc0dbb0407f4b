"""The error a run raises when it cannot start as asked."""

from __future__ import annotations

__all__ = ["RunError"]


class RunError(Exception):
    """The run cannot start as asked (e.g. it would overwrite a checkpoint)."""
